"""Building a run from its composed config: the config itself (:func:`compose_config`, the start-up
:func:`check_config`), the scene, the system, Lightning's trainer and the output callbacks, and the
report of a finished job. launch.py is the command line around these; tests, benchmarks and
systems/sequence.py build with them directly."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.callbacks import ModelCheckpoint

from core.errors import InputError, one_line
from datasets.scene import Scene
from datasets.sequence import Sequence
from systems.base import BaseSystem
from systems.config import Eval, Export, as_section, parse_duration, register_configs
from systems.validation import check_sections, check_targets
from systems.callbacks import AtomicCheckpointIO, Evaluation, MeshExport, ScaledSchedules, TerminateTestOnSigterm, TimeBudget, flatten
from systems.trust import build, check_run_targets
from systems.run_dir import find_checkpoint, load_weights

log = logging.getLogger("launch")

# Keys of a dataset config that describe it rather than being loader arguments.
DATASET_META = ("name", "scene", "background")
# Keys of _target_ nodes that are ours, not arguments of the target (check_targets and build_trainer leave them out).
TARGET_META = {"dataset": DATASET_META, "trainer": ("checkpoint_every_n_steps", "schedule_steps", "scale_schedules")}
# Keys that check_targets leaves to their typed section (trainer.max_steps: None is ours, a budgeted run; build_trainer sets it).
UNCHECKED = {"dataset": DATASET_META, "trainer": (*TARGET_META["trainer"], "max_steps")}
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    register_configs()
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



def load_scene(cfg: DictConfig) -> Scene | Sequence:
    """Instantiate the dataset loader from ``cfg.dataset`` (meta keys stripped)."""
    loader = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k not in DATASET_META}
    missing = next((k for k in loader if OmegaConf.is_missing(cfg.dataset, k)), None)
    if missing is not None:  # a value the dataset's YAML requires (???), e.g. dataset=ngp's root
        raise InputError(f"dataset.{missing}", f"required; pass dataset.{missing}=...")
    if "root" in loader and not Path(loader["root"]).is_dir() and "${data_dir}" in str(cfg.dataset._get_node("root")._value()):
        raise InputError(loader["root"], f"scene folder does not exist (searched under data_dir={cfg.data_dir}); pass data_dir=DIR "
                                         "(the folder holding dtu/, nerf_synthetic/) or dataset.root=SCENE_DIR")
    return build(loader, _convert_="all")


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


def build_system(cfg: DictConfig, run_dir: Path, checkpoint: dict | None = None, scene: Scene | None = None) -> BaseSystem:
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


def load_run(path: str) -> BaseSystem:
    """The trained system of a finished run directory (or checkpoint), built from its saved config."""
    register_configs()  # the resolvers its saved config may use
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
    export = MeshExport(mesh_path, as_section(Export, OmegaConf.to_container(cfg.export, resolve=True)), cameras_path=run_dir / "cameras_refined.npz")
    evaluation = Evaluation(run_dir, mesh_path, as_section(Eval, OmegaConf.to_container(cfg.eval, resolve=True)), scan=cfg.scan)
    evaluation.hparams = flatten(OmegaConf.to_container(cfg, resolve=True))
    return export, evaluation


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


def objective_value(cfg: DictConfig, metrics: dict | None) -> float | None:
    """What a job returns to Hydra's sweeper: ``metrics[cfg.objective]``, NaN (a failed trial to Optuna)
    when the job failed or has no such metric, None without an objective."""
    if not cfg.objective:
        return None
    value = (metrics or {}).get(cfg.objective)
    return float(value) if isinstance(value, (int, float)) else math.nan
