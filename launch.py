"""Train, evaluate or export a surface reconstruction.

    python launch.py                                        # NeuS on the embedded synthetic scene
    python launch.py dataset=dtu scan=24 data_dir=../shared/data
    python launch.py -m encoder=hashgrid,frequency          # a sweep
    python launch.py resume=outputs/neus-synthetic/<time>   # continue a killed run
    python launch.py resume=<run dir> mode=test             # re-export and re-evaluate
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from datasets.errors import InputError
from systems.callbacks import AtomicCheckpointIO, Evaluation, MeshExport, TerminateTestOnSigterm
from systems.inspect import inspect_init, transfer

MODES = ("train", "test", "eval", "export", "inspect_init", "transfer")
# Keys of a dataset config that describe it rather than being loader arguments.
DATASET_META = ("name", "scene", "background")
RESULT_NAMES = ("checkpoints", "meshes", "metrics.json", "renders", "cameras_refined.npz")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _arg(argv: list[str], key: str) -> str | None:
    """Value of the last ``key=value`` command-line override, if any."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")]
    return values[-1] if values else None


def find_checkpoint(path: str) -> tuple[Path, Path]:
    """(run directory, checkpoint file) of ``resume=PATH``, a run directory or a checkpoint file."""
    p = Path(path)
    if p.is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return run_dir, p
    if not p.is_dir():
        raise InputError(path, "resume path does not exist")
    ckpt = p / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise InputError(ckpt, "no checkpoint to resume from")
    return p, ckpt


def check_group_choices(args: list[str]) -> None:
    """Refuse ``group=option`` overrides naming no config file, in one line (before Hydra's longer report)."""
    for arg in args:
        key, _, value = arg.partition("=")
        group = CONFIG_DIR / key.lstrip("+~")
        if not value or not group.is_dir():
            continue
        choices = sorted(p.stem for p in group.glob("*.yaml"))
        for option in value.split(","):
            if option not in choices:
                raise InputError(group / f"{option}.yaml", f"unknown {key} {option!r}; choose one of {', '.join(choices)}")


def prepare_argv(argv: list[str]) -> list[str]:
    """Rewrite the command line before Hydra sees it.

    ``resume=PATH`` re-applies the run's saved overrides (new ones win) and points
    ``hydra.run.dir`` at the run. Without it, an explicit ``hydra.run.dir`` that already holds
    results is refused, so no run is ever overwritten.
    """
    args = argv[1:]
    check_group_choices(args)
    resume = _arg(args, "resume")
    if resume and resume != "null" and "-m" not in args and "--multirun" not in args:
        run_dir, _ = find_checkpoint(resume)
        saved_file = run_dir / ".hydra" / "overrides.yaml"
        saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else []
        given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
        skip = given | {"resume", "mode", "hydra.run.dir"}
        kept = [a for a in saved if a.split("=", 1)[0].lstrip("+~") not in skip]
        return [argv[0], *kept, *args, f"hydra.run.dir={run_dir}"]
    run_dir = _arg(args, "hydra.run.dir")
    if run_dir and Path(run_dir).is_dir() and any((Path(run_dir) / n).exists() for n in RESULT_NAMES):
        raise InputError(run_dir, "run directory already holds a run; pass resume=DIR to continue it or choose a new hydra.run.dir")
    return argv


def load_scene(cfg: DictConfig):
    """Instantiate the dataset loader from ``cfg.dataset`` (meta keys stripped)."""
    loader = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k not in DATASET_META}
    # Called directly rather than through instantiate, which would wrap our InputError.
    return get_method(loader.pop("_target_"))(**loader)


def default_resolution(cfg: DictConfig) -> int:
    if cfg.export.resolution:
        return int(cfg.export.resolution)
    return 512 if torch.cuda.is_available() else 192


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list) -> pl.Trainer:
    t = cfg.trainer
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
                                 every_n_train_steps=t.checkpoint_every_n_steps, save_top_k=-1, save_last=True)
    return pl.Trainer(
        max_steps=t.max_steps, max_time=t.max_time, val_check_interval=t.val_check_interval, check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps, accelerator=t.accelerator, devices=1, precision=t.precision,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""),
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="step"), TerminateTestOnSigterm(), *callbacks],
        plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0, enable_model_summary=False, inference_mode=False,
    )


def load_checkpoint(ckpt: Path) -> dict:
    """A Lightning checkpoint as saved by our trainer (weights, step, optimiser, loop state)."""
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def build_system(cfg: DictConfig, run_dir: Path, checkpoint: dict | None = None):
    """The scene and system ``cfg`` describes, with the weights of ``checkpoint`` when given."""
    scene = load_scene(cfg)
    # A scene's own noisy starting poses (IDR's cameras_linear_init.npz) go to cameras that take them.
    start = {"init_c2w": scene.init_c2w} if scene.init_c2w is not None and "use_init_file" in cfg.camera else {}
    cameras = instantiate(cfg.camera, intrinsics=scene.intrinsics, c2w=scene.c2w, **start)
    # The scene is passed after instantiation: Hydra would turn its dataclass into a config.
    system = instantiate(cfg.system, run_dir=str(run_dir), _convert_="all", _partial_=True)(scene=scene, cameras=cameras)
    if checkpoint is not None:
        system.load_state_dict(checkpoint["state_dict"])
    return system


def load_run(path: str):
    """The trained system of a finished run directory (or checkpoint), built from its saved config."""
    run_dir, ckpt = find_checkpoint(path)
    return build_system(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), run_dir, load_checkpoint(ckpt)).eval()


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Build the scene and system from ``cfg`` and do what ``cfg.mode`` says; returns the metrics."""
    if cfg.mode not in MODES:
        raise InputError("mode", f"unknown value {cfg.mode!r}; choose one of {', '.join(MODES)}")
    pl.seed_everything(cfg.seed, verbose=False)
    if cfg.mode == "transfer":
        if not (cfg.geometry_run and cfg.appearance_run):
            raise InputError("mode", "mode=transfer needs geometry_run=<run dir> and appearance_run=<run dir>")
        video = transfer(load_run(cfg.geometry_run), load_run(cfg.appearance_run), run_dir / "transfer")
        return {"video": str(video)}
    ckpt = find_checkpoint(cfg.resume)[1] if cfg.resume else None
    if cfg.mode not in ("train", "inspect_init") and ckpt is None:
        raise InputError("mode", f"mode={cfg.mode} needs resume=<run dir or checkpoint>")
    # Training resumes through Lightning (optimiser and loops too); other modes need the weights only.
    checkpoint = load_checkpoint(ckpt) if ckpt is not None and cfg.mode != "train" else None
    system = build_system(cfg, run_dir, checkpoint)
    if cfg.mode == "inspect_init":
        return {"inspect": [str(p) for p in inspect_init(system, run_dir / "inspect")]}

    mesh_path = run_dir / "meshes" / cfg.export.filename
    export = MeshExport(mesh_path, default_resolution(cfg), cfg.export.largest_component, cfg.export.vertex_colors,
                        cameras_path=run_dir / "cameras_refined.npz")
    if cfg.mode == "export":
        export.export(system)
        return {"step": int(checkpoint["global_step"]), "mesh": str(mesh_path)}

    started = time.time()
    evaluation = Evaluation(run_dir, mesh_path, cfg.eval.chamfer_points, cfg.eval.max_dist, cfg.eval.mask_dilation)
    callbacks = [evaluation] if cfg.mode == "eval" and mesh_path.exists() else [export, evaluation]
    trainer = build_trainer(cfg, run_dir, callbacks)
    if cfg.mode == "train":
        trainer.fit(system, ckpt_path=str(ckpt) if ckpt else None)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        evaluation.extra = {"train_time_s": round(time.time() - started, 1)}
    else:
        # The weights are loaded already; the trainer's own step is 0 when testing, so report the checkpoint's.
        evaluation.extra = {"step": int(checkpoint["global_step"])}
    trainer.test(system, verbose=False)
    return evaluation.metrics


def summary(cfg: DictConfig, run_dir: Path, metrics: dict) -> str:
    """A one-screen report of a finished job."""
    lines = [f"== {cfg.name} ({cfg.mode}) ==", f"run dir      {run_dir}", f"steps        {metrics.get('step', '-')}"]
    if "train_time_s" in metrics:
        lines.append(f"train time   {metrics['train_time_s']} s")
    if "chamfer" in metrics:
        lines.append(f"chamfer      {metrics['chamfer']:.3f}  (accuracy {metrics['accuracy']:.3f}, completeness {metrics['completeness']:.3f})")
    if "psnr" in metrics:
        iou = f", IoU {metrics['iou']:.4f}" if "iou" in metrics else ""
        lines.append(f"held-out     PSNR {metrics['psnr']:.2f} dB{iou} over {metrics['n_test_views']} views")
    if "mesh" in metrics:
        lines.append(f"mesh         {metrics['mesh']}")
    for key in ("inspect", "video"):
        if key in metrics:
            lines.append(f"{key:<12} {metrics[key]}")
    return "\n".join(lines)


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = not cfg.resume
    try:
        metrics = run(cfg, run_dir)
    except InputError as err:
        if fresh and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:  # Lightning's, raised at the end of the step in which the signal came
        print(f"stopped by SIGTERM; continue with: python launch.py resume={run_dir}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    print(summary(cfg, run_dir, metrics))


if __name__ == "__main__":
    try:
        sys.argv = prepare_argv(sys.argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
