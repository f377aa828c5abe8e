"""Train, evaluate or export a surface reconstruction.

    python launch.py                                        # NeuS on the embedded synthetic scene
    python launch.py dataset=dtu scan=24 data_dir=../shared/data
    python launch.py -m encoder=hashgrid,frequency          # a sweep
    python launch.py resume=outputs/neus-synthetic_sphere_torus/<time>   # continue a killed run
    python launch.py resume=<run dir> mode=test             # re-export and re-evaluate
"""
from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from core.errors import InputError, one_line
from datasets.scene import Scene
from datasets.sequence import Sequence
from models.cameras import FixedCameras
from systems.config_doc import job_config_request, job_config_text
from systems.config import SequenceSettings, as_section, check_sections, check_targets, parse_duration, register_configs
from systems.config import Viewer as ViewerSettings
from systems.callbacks import (AtomicCheckpointIO, Evaluation, MeshExport, ScaledSchedules, StopReason, TerminateTestOnSigterm, TimeBudget, TrainTime,
                               exit_on_sigterm, flatten, resume_hint)
from systems.visual_checks import inspect_init, transfer
from systems.quiet import quiet_libraries
from systems.trust import build, check_run_targets, check_saved_overrides, read_saved_overrides, trust_command_line
from systems.sequence import moving_cameras, train_sequence
from systems.sweep import FAILED_JOBS_FILE, failed_jobs, record_job
from systems.video import render_videos
from systems.viewer import ViewerCallback, serve_run, serve_sequence
from systems.run_dir import (HYDRA_ENTRIES, adopt, check_new_run_dir, claim, find_checkpoint, folder_state, load_weights,
                             own_checkpoint, remove_created, remove_temporaries)

log = logging.getLogger("launch")
MODES = ("train", "test", "eval", "export", "inspect_init", "transfer", "video", "view")
# Keys of a dataset config that describe it rather than being loader arguments.
DATASET_META = ("name", "scene", "background")
# Keys of _target_ nodes that are ours, not arguments of the target (check_targets and build_trainer leave them out).
TARGET_META = {"dataset": DATASET_META, "trainer": ("checkpoint_every_n_steps", "schedule_steps", "scale_schedules")}
# Keys that check_targets leaves to their typed section (trainer.max_steps: None is ours, a budgeted run; build_trainer sets it).
UNCHECKED = {"dataset": DATASET_META, "trainer": (*TARGET_META["trainer"], "max_steps")}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Whether an explicit hydra.run.dir existed before this process, and the names it held before prepare_argv
# claimed it (set by prepare_argv; None: Hydra made the folder, main claims it).
RUN_DIR_EXISTED: bool | None = None
RUN_DIR_BEFORE: set[str] | None = None
# A sweep's folder (set by prepare_argv); its failed jobs have one line each in its failed_jobs.txt (systems.sweep),
# written by whichever process ran them (the basic launcher's, joblib's or submitit's workers).
SWEEP_DIR: Path | None = None
register_configs()
quiet_libraries()


def _arg(argv: list[str], key: str) -> str | None:
    """Value of the last ``key=value`` command-line override, if any."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")]
    return values[-1] if values else None


def check_group_choices(args: list[str]) -> None:
    """Refuse ``group=option`` overrides naming no config file, in one line (before Hydra's longer
    report). Overrides are read with Hydra's own parser, so sweeps (``a,b``, ``choice(a,b)``) are
    checked option by option and ``glob(...)`` is left to Hydra."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except OverrideParseException:
        return  # check_config reports it
    for override in overrides:
        group = CONFIG_DIR / override.key_or_group
        if override.is_delete() or not group.is_dir() or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            continue
        options = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        choices = sorted(p.stem for p in group.glob("*.yaml"))
        for option in options:
            if option not in choices:
                raise InputError(group / f"{option}.yaml", f"unknown {override.key_or_group} {option!r}; choose one of {', '.join(choices)}")


def compose_config(overrides: list[str]) -> DictConfig:
    """The config that ``python launch.py OVERRIDES`` runs with (``hydra.*`` overrides excluded)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def check_config(args: list[str]) -> None:
    """Compose the config of the command line (each option of a sweep in turn) and check it: wrong
    types and unknown keys in typed sections (systems/config.py) and in ``_target_`` objects fail
    here, in one line, before a run directory exists."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except OverrideParseException as err:
        raise InputError("command line", one_line(str(err))) from err
    plain = [o.input_line for o in overrides if not o.key_or_group.startswith("hydra") and not o.is_sweep_override()]
    variants = [plain]
    for o in overrides:
        if o.is_sweep_override() and not o.key_or_group.startswith("hydra") and o.value_type != ValueType.GLOB_CHOICE_SWEEP:
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # interval sweeps (optuna) have no values to list
                continue
            variants += [[*plain, f"{o.get_key_element()}={v}"] for v in values]
    for variant in variants:
        try:
            cfg = compose_config(variant)
            container = OmegaConf.to_container(cfg, resolve=True)
        except (HydraException, OmegaConfBaseException) as err:
            raise as_input_error(err) from err
        check_sections(cfg)
        check_targets(container, ignore=UNCHECKED)


def prepare_argv(argv: list[str]) -> list[str]:
    """Rewrite the command line before Hydra sees it.

    ``resume=PATH`` re-applies the run's saved overrides (new ones win; a ``_target_`` in them must pass
    systems/trust.py) and points ``hydra.run.dir`` at the run. Without it, ``hydra.run.dir`` (named here when
    not given) or ``hydra.sweep.dir`` is refused unless it is new or empty, so no run and no user file is ever
    overwritten, and a single run claims its folder (systems/run_dir.py ``claim``) before Hydra writes into it.
    """
    global RUN_DIR_EXISTED, RUN_DIR_BEFORE, SWEEP_DIR
    args = argv[1:]
    if (job := job_config_request(args)) is not None:  # --cfg job, with each documented key's comment (systems/config_doc.py)
        check_group_choices(job.overrides)
        check_config(job.overrides)
        print(job_config_text(CONFIG_DIR, job), end="")
        sys.exit(0)
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc") for a in args):
        return argv  # Hydra's own commands
    if ddp_child():  # rank 0 checked this command line and made the run directory; log to the console, not to a file there
        return [argv[0], *[a for a in args if not a.startswith("hydra/job_logging=")], "hydra/job_logging=stdout"]
    check_group_choices(args)
    multirun = "-m" in args or "--multirun" in args
    resume = _arg(args, "resume")
    if resume and resume not in ("null", "auto") and not multirun:
        run_dir, _ = find_checkpoint(resume)
        saved_file = run_dir / ".hydra" / "overrides.yaml"
        saved = read_saved_overrides(saved_file)
        given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
        skip = given | {"resume", "mode", "hydra.run.dir", "trust_run_targets"}  # a run cannot trust itself
        kept = [a for a in saved if a.split("=", 1)[0].lstrip("+~") not in skip]
        trust_command_line(args, _arg(args, "trust_run_targets") == "true")
        check_saved_overrides(kept, origin=str(saved_file))
        check_config([*kept, *args])
        return [argv[0], *kept, *args, f"hydra.run.dir={run_dir}"]
    check_config(args)
    run_dir = _arg(args, "hydra.run.dir")
    if not run_dir and not multirun and resume != "auto":  # fixed here (as configs/config.yaml would name it), to be claimed
        run_dir = f"outputs/{compose_config([a for a in args if not a.startswith('hydra')]).name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        argv = [*argv, f"hydra.run.dir={run_dir}"]
    if run_dir and not multirun and not (resume == "auto" and folder_state(Path(run_dir)) in ("run", "started")):
        check_new_run_dir(Path(run_dir))
        RUN_DIR_EXISTED = Path(run_dir).exists()
        RUN_DIR_BEFORE = {p.name for p in Path(run_dir).iterdir()} if RUN_DIR_EXISTED else set()
        claim(Path(run_dir))  # first, atomically: a second run started into it now is refused
    sweep_dir = _arg(args, "hydra.sweep.dir")
    if sweep_dir and multirun and folder_state(Path(sweep_dir)) not in ("absent", "empty") and not (
            resume == "auto" and (Path(sweep_dir) / "multirun.yaml").is_file()):  # resume=auto re-runs a sweep of ours
        raise InputError(sweep_dir, "sweep directory is not empty; choose a new hydra.sweep.dir")
    if multirun:
        if not sweep_dir:  # fixed here (as configs/config.yaml would name it) so that this process knows it
            sweep_dir = f"multirun/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
            argv = [*argv, f"hydra.sweep.dir={sweep_dir}"]
        SWEEP_DIR = Path(sweep_dir)
    return argv


def load_scene(cfg: DictConfig):
    """Instantiate the dataset loader from ``cfg.dataset`` (meta keys stripped)."""
    loader = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k not in DATASET_META}
    missing = next((k for k in loader if OmegaConf.is_missing(cfg.dataset, k)), None)
    if missing is not None:  # a value the dataset's YAML requires (???), e.g. dataset=ngp's root
        raise InputError(f"dataset.{missing}", f"required; pass dataset.{missing}=...")
    if "root" in loader and not Path(loader["root"]).is_dir() and "${data_dir}" in str(cfg.dataset._get_node("root")._value()):
        raise InputError(loader["root"], f"scene folder does not exist (searched under data_dir={cfg.data_dir}); pass data_dir=DIR "
                                         "(the folder holding dtu/, nerf_synthetic/) or dataset.root=SCENE_DIR")
    return build(loader, _convert_="all")


def default_resolution(cfg: DictConfig) -> int:
    if cfg.export.resolution is not None:
        return int(cfg.export.resolution)
    return 512 if torch.cuda.is_available() else 192


def ddp_child() -> bool:
    """Whether this process is one of the copies of the command (ranks > 0) that Lightning's DDP launcher
    starts with ``LOCAL_RANK``/``NODE_RANK`` set and ``hydra.run.dir`` pointing at rank 0's run directory."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, resume_dir: Path | None = None) -> pl.Trainer:
    """Lightning's trainer from ``cfg.trainer``, with the callbacks of ``cfg.callbacks`` (null ones left out;
    ``checkpoint`` writes to ``run_dir/checkpoints``), then ``callbacks``, and the logger of ``cfg.logger`` in
    ``run_dir/tensorboard``. What the run directory and the systems rely on is fixed here: atomic checkpoint
    writes, no sanity validation, validation by steps, autograd in evaluation (SDF normals). A SIGTERM in the test
    phase names ``resume_dir`` (default ``run_dir``) in its resume line."""
    def make(key: str, node: Any, **kwargs: Any) -> Any:
        try:
            return build(node, _convert_="object", **kwargs)
        except InstantiationException as err:  # e.g. Lightning refusing a strategy or precision: one line naming the node
            cause = err.__cause__ or err
            raise InputError(key, one_line(str(cause), type(cause).__name__)) from err

    named = [make(f"callbacks.{name}", node, **({"dirpath": str(run_dir / "checkpoints")} if name == "checkpoint" else {}))
             for name, node in cfg.callbacks.items() if node is not None]
    logger = make("logger", cfg.logger, save_dir=str(run_dir), name="tensorboard", version="")
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k not in TARGET_META["trainer"]}
    callbacks = [*named, TerminateTestOnSigterm(resume_dir or run_dir, cfg.mode), *callbacks]
    if trainer["max_steps"] is None:  # a time budget (TimeBudget plans the steps), or the length schedules are written for
        trainer["max_steps"] = -1 if trainer["max_time"] else cfg.trainer.schedule_steps
        if trainer["max_time"]:
            callbacks.append(TimeBudget(parse_duration(trainer["max_time"]), cfg.trainer.schedule_steps))
    elif cfg.trainer.scale_schedules:
        callbacks.append(ScaledSchedules(trainer["max_steps"], cfg.trainer.schedule_steps))
    if trainer["max_steps"] > 0:  # a short run logs about 100 points too, not max_steps / 25 of them
        trainer["log_every_n_steps"] = max(1, min(trainer["log_every_n_steps"], trainer["max_steps"] // 100))
    return make("trainer", trainer, logger=logger, callbacks=callbacks,
                enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in named), plugins=[AtomicCheckpointIO()],
                check_val_every_n_epoch=None, num_sanity_val_steps=0, enable_model_summary=False, inference_mode=False)


def as_input_error(err: Exception) -> InputError:
    """Hydra's or OmegaConf's report of a config error (several lines, chained exceptions) as our one
    line: the deepest config key the chain names and the innermost cause's first line."""
    where, cause = "config", err
    while not isinstance(cause, InputError):
        match = re.search(r"full_key: (\S+)", str(cause))
        where = match.group(1) if match else where
        if cause.__cause__ is None or isinstance(cause, OmegaConfBaseException):
            return InputError(where, one_line(str(cause), type(cause).__name__))
        cause = cause.__cause__
    return cause


def single_scene_mode(mode: str) -> InputError:
    """The error for ``mode`` asked of a sequence, which only trains."""
    return InputError("mode", f"mode={mode} is for single scenes; a sequence run writes its meshes, metrics and video as it "
                              "trains, resume=RUN continues it and mode=view resume=RUN shows it")


def build_system(cfg: DictConfig, run_dir: Path, checkpoint: dict | None = None, scene: Scene | None = None):
    """The system ``cfg`` describes on ``scene`` (None: the scene of ``cfg.dataset``), with the weights of
    ``checkpoint`` when given."""
    scene = load_scene(cfg) if scene is None else scene
    if isinstance(scene, Sequence):
        raise single_scene_mode(cfg.mode)
    # A scene's own noisy starting poses (IDR's cameras_linear_init.npz) go to cameras that take them.
    start = {"init_c2w": scene.init_c2w} if scene.init_c2w is not None and "use_init_file" in cfg.camera else {}
    try:
        cameras = build(cfg.camera, intrinsics=scene.intrinsics, c2w=scene.c2w, **start)
        # The scene is passed after instantiation: Hydra would turn its dataclass into a config.
        system = build(cfg.system, run_dir=str(run_dir), _convert_="object", _partial_=True)(scene=scene, cameras=cameras)
    except InstantiationException as err:
        raise as_input_error(err) from err
    if checkpoint is not None:
        system.load_state_dict(checkpoint["state_dict"])
    return system


def load_run(path: str):
    """The trained system of a finished run directory (or checkpoint), built from its saved config."""
    run_dir, ckpt = find_checkpoint(path)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    check_run_targets(cfg, origin=str(run_dir / ".hydra" / "config.yaml"))  # data, not code
    if "eps" in cfg.system.get("optim", {}):  # saved before Adam's eps moved to system.optimizer (loading needs no optimiser)
        cfg.system.optim.pop("eps")
    return build_system(cfg, run_dir, load_weights(ckpt)).eval()


def mesh_filename(export: DictConfig) -> str:
    """``export.filename``, or by default ``final.ply``, and ``final_<N>.ply`` for a mesh decimated to N faces
    (so a decimated export never replaces the full mesh)."""
    if export.filename:
        return export.filename
    return f"final_{export.target_faces}.ply" if export.target_faces is not None else "final.ply"


def outputs(cfg: DictConfig, run_dir: Path, mesh_path: Path) -> tuple[MeshExport, Evaluation]:
    """The mesh export (to ``mesh_path``) and evaluation (``run_dir/metrics.json``) callbacks of ``cfg.export``, ``cfg.eval``."""
    export = MeshExport(mesh_path, default_resolution(cfg), cfg.export.largest_component, cfg.export.vertex_colors,
                        cameras_path=run_dir / "cameras_refined.npz", target_faces=cfg.export.target_faces,
                        texture_size=cfg.export.texture_size if cfg.export.texture else None, points=cfg.export.points)
    evaluation = Evaluation(run_dir, mesh_path, cfg.eval.chamfer_points, cfg.eval.max_dist, cfg.eval.mask_dilation,
                            protocol=cfg.eval.protocol, dtu_dir=cfg.eval.dtu_dir, scan=cfg.scan)
    evaluation.hparams = flatten(OmegaConf.to_container(cfg, resolve=True))
    return export, evaluation


def run_sequence(cfg: DictConfig, run_dir: Path, sequence: Sequence) -> dict:
    """Train a dynamic scene frame by frame (systems/sequence.py), or view a sequence run; returns the summary of its
    per-frame metrics."""
    if cfg.mode == "view":
        if not cfg.resume:
            raise InputError("mode", "mode=view needs resume=<run dir>")
        return {"viewer": serve_sequence(sequence.load(0), run_dir, cfg.viewer.host, cfg.viewer.port)}
    if cfg.mode != "train":
        raise single_scene_mode(cfg.mode)
    if cfg.viewer.enabled:
        raise InputError("viewer.enabled", "the live viewer shows single scenes; open a sequence run with mode=view resume=RUN")

    def make_system(scene: Scene, folder: Path):
        system = build_system(cfg, folder, scene=scene)
        if not isinstance(system.cameras, FixedCameras):
            raise InputError("camera", "a sequence trains with calibrated cameras (camera=fixed)")
        system.cameras = moving_cameras(system.cameras)
        return system

    def make_trainer(folder: Path, steps: int, callbacks: list, checkpoints: bool) -> pl.Trainer:
        frame = cfg.copy()
        frame.trainer.max_steps = steps
        if not checkpoints:
            frame.callbacks.checkpoint = None
        return build_trainer(frame, folder, callbacks, resume_dir=run_dir)  # a sequence resumes as a whole

    settings = as_section(SequenceSettings, OmegaConf.to_container(cfg.sequence))
    return train_sequence(sequence, settings, run_dir, make_system, make_trainer, lambda folder, mesh: outputs(cfg, folder, mesh))


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
    data = load_scene(cfg)
    if isinstance(data, Sequence):
        return run_sequence(cfg, run_dir, data)
    ckpt = find_checkpoint(cfg.resume)[1] if cfg.resume else None
    if cfg.mode not in ("train", "inspect_init") and ckpt is None:
        raise InputError("mode", f"mode={cfg.mode} needs resume=<run dir or checkpoint>")
    if ckpt is not None:
        for stale in remove_temporaries(run_dir):
            log.info("removed %s, left by an interrupted write", stale)
        log.info("resuming from %s", ckpt)
    # Training resumes through Lightning (optimiser and loops too); other modes need the weights only.
    checkpoint = load_weights(ckpt) if ckpt is not None and cfg.mode != "train" else None
    system = build_system(cfg, run_dir, checkpoint, scene=data)
    if cfg.mode in ("video", "export"):  # no Lightning loop here to defer a SIGTERM to
        exit_on_sigterm(run_dir, cfg.mode)
    if cfg.mode == "inspect_init":
        return {"inspect": [str(p) for p in inspect_init(system, run_dir / "inspect")]}
    if cfg.mode == "video":
        v = cfg.video
        videos = render_videos(system.eval(), run_dir / "video", v.frames, v.fps, v.size, v.path)
        return {"step": int(checkpoint["global_step"]), "video": [str(p) for p in videos]}
    if cfg.mode == "view":
        url = serve_run(system.eval(), run_dir, mesh_filename(cfg.export), cfg.viewer.host, cfg.viewer.port)
        return {"step": int(checkpoint["global_step"]), "viewer": url}

    mesh_path = run_dir / "meshes" / mesh_filename(cfg.export)
    export, evaluation = outputs(cfg, run_dir, mesh_path)
    if cfg.mode == "export":
        return {"step": int(checkpoint["global_step"]), **export.export(system)}

    callbacks = [evaluation] if cfg.mode == "eval" and mesh_path.exists() else [export, evaluation]
    if cfg.mode == "train" and cfg.viewer.enabled:
        callbacks.append(ViewerCallback(as_section(ViewerSettings, OmegaConf.to_container(cfg.viewer))))
    train_time = TrainTime()  # summed over resumes through the checkpoint
    trainer = build_trainer(cfg, run_dir, [*callbacks, train_time, StopReason()] if cfg.mode == "train" else callbacks)
    if cfg.mode == "train":
        trainer.fit(system, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # with optimiser and loops: resumable
        hull = {"hull_time_s": system.hull_time_s} if getattr(system, "hull_time_s", None) is not None else {}
        evaluation.extra = {"train_time_s": round(train_time.seconds, 1), **hull}
    else:
        # The weights are loaded already; the trainer's own step is 0 when testing, so report and log the checkpoint's.
        evaluation.extra = {"step": int(checkpoint["global_step"])}
        export.step = int(checkpoint["global_step"])
    trainer.test(system, verbose=False)
    return evaluation.metrics


def summary(cfg: DictConfig, run_dir: Path, metrics: dict) -> str:
    """A one-screen report of a finished job."""
    lines = [f"== {cfg.name} ({cfg.mode}) ==", f"run dir      {run_dir}", f"steps        {metrics.get('step', metrics.get('steps', '-'))}"]
    if "n_frames" in metrics:  # a sequence: the per-frame table is frames.csv
        lines.append(f"frames       {metrics['n_frames']} (per frame: {run_dir / 'frames.csv'})")
        for key in ("chamfer", "psnr", "iou"):
            if f"{key}_mean" in metrics:
                lines.append(f"{key:<12} mean {metrics[key + '_mean']:.3f}, min {metrics[key + '_min']:.3f}, max {metrics[key + '_max']:.3f}")
    if "train_time_s" in metrics or "eval_time_s" in metrics:
        parts = [f"{label} {metrics[key]} s" for key, label in (("train_time_s", "training"), ("eval_time_s", "evaluation"))
                 if key in metrics]
        lines.append(f"time         {', '.join(parts)}")
    if "hull_time_s" in metrics:
        lines.append(f"visual hull  {metrics['hull_time_s']} s (before training)")
    if "chamfer" in metrics:
        lines.append(f"chamfer      {metrics['chamfer']:.3f}  (accuracy {metrics['accuracy']:.3f}, completeness {metrics['completeness']:.3f}"
                     f"{', ' + metrics['protocol'] if 'protocol' in metrics else ''})")
    if "psnr" in metrics:
        iou = f", IoU {metrics['iou']:.4f}" if "iou" in metrics else ""
        lines.append(f"held-out     PSNR {metrics['psnr']:.2f} dB{iou} over {metrics['n_test_views']} views")
    for key in ("mesh", "textured", "points", "inspect", "video", "viewer"):  # a path, or several, one a line
        paths = metrics.get(key, [])
        for i, path in enumerate([paths] if isinstance(paths, str) else paths):
            lines.append(f"{key if i == 0 else '':<12} {path}")
    return "\n".join(lines)


def fail(line: str, code: int) -> None:
    """Report a failed job in one line: exit with ``code``, or in a sweep, record it in the sweep's
    ``failed_jobs.txt`` (the job's line, replaced when a re-run sweep fails again) and let the sweep go on."""
    print(line, file=sys.stderr)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        sys.exit(code)
    record_job(hydra_cfg.sweep.dir, hydra_cfg.job.num, line)


def objective_value(cfg: DictConfig, metrics: dict | None) -> float | None:
    """What a job returns to Hydra's sweeper: ``metrics[cfg.objective]``, NaN (a failed trial to Optuna)
    when the job failed or has no such metric, None without an objective."""
    if not cfg.objective:
        return None
    value = (metrics or {}).get(cfg.objective)
    return float(value) if isinstance(value, (int, float)) else math.nan


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    auto = cfg.resume == "auto"
    if auto:  # continue this run directory when it holds a checkpoint (a requeued or re-run job), else start it
        cfg.resume = own_checkpoint(run_dir)
    fresh = not cfg.resume
    child = ddp_child()  # in rank 0's run directory, which it checked
    trust_command_line(HydraConfig.get().overrides.task, cfg.trust_run_targets)
    kept = RUN_DIR_BEFORE  # what a failed start leaves: None unless this process claimed run_dir
    try:
        if fresh and not auto and kept is None and not child:  # Hydra made the folder: claim it, unless taken
            if {p.name for p in run_dir.iterdir()} - HYDRA_ENTRIES:
                raise InputError(run_dir, "run directory already holds files; pass resume=DIR to continue a run or choose a new one")
            claim(run_dir)
            kept = set()
        elif not child and kept is None:
            adopt(run_dir)  # a resumed run made before the marker
        if HydraConfig.get().mode == RunMode.MULTIRUN and (cfg.trainer.devices != 1 or cfg.trainer.num_nodes != 1):
            raise InputError("trainer.devices", "a -m sweep runs each job on one device (DDP re-runs the command line)")
        if HydraConfig.get().mode == RunMode.MULTIRUN and (cfg.viewer.enabled or cfg.mode == "view"):
            raise InputError("viewer.enabled" if cfg.viewer.enabled else "mode", "the viewer shows one run; start it without -m")
        metrics = run(cfg, run_dir)
    except InputError as err:
        if fresh and kept is not None and not child and not any((run_dir / name).exists() for name in ("checkpoints", "frames")):
            remove_created(run_dir, kept, remove_folder=not RUN_DIR_EXISTED)
        fail(f"error: {err}", 2)
        return objective_value(cfg, None)
    except SIGTERMException:  # Lightning's, raised at the end of the step in which the signal came
        print(resume_hint(run_dir, cfg.mode), file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed")
        fail(f"error: {run_dir}: {type(err).__name__}: {err}", 1)
        return objective_value(cfg, None)
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a re-run sweep's job that now finished is no longer a failure
        record_job(HydraConfig.get().sweep.dir, HydraConfig.get().job.num, None)
    if not child:
        print(summary(cfg, run_dir, metrics))
    return objective_value(cfg, metrics)


if __name__ == "__main__":
    try:
        sys.argv = prepare_argv(sys.argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    main()
    n_failed = len(failed_jobs(SWEEP_DIR)) if SWEEP_DIR is not None else 0
    if n_failed:
        print(f"error: {n_failed} job(s) of the sweep failed (listed in {SWEEP_DIR / FAILED_JOBS_FILE}); the others finished",
              file=sys.stderr)
        sys.exit(2)
