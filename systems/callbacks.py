"""Callbacks shared by the systems: atomic checkpoints, mesh export, evaluation and SIGTERM in the test phase."""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import trimesh
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.plugins.io import TorchCheckpointIO
from scipy.spatial import cKDTree

from core.errors import InputError
from core.io import atomic_write
from models.interfaces import StepHook
from models.mesh import decimate
from models.metrics import chamfer_distance, downsample_points, dtu_official_distances, sample_surface_grid, visible_in_masks
from systems.config import Eval, Export
from systems.mesh_io import dtu_official_paths, load_dtu_official, load_reference, point_cloud_path, textured_files
from systems.run_dir import load_weights

log = logging.getLogger(__name__)
TENSORBOARD_MAX_FACES = 50_000  # meshes logged to TensorBoard are decimated to this many faces
DTU_DENSITY = 0.2  # mm: DTU's official evaluation samples the mesh and downsamples it to points this far apart


class StepSchedules(pl.Callback):
    """The one mechanism for what changes with the training step: before each step, every part of the
    system with an ``update_step(epoch, step)`` hook (:class:`~models.interfaces.StepHook`) sets itself
    for that step: the system (NeuS's cosine annealing, IDR's mask-loss sharpness), the encoders
    (progressive levels, BARF's window), the occupancy grid. Loss weights are schedules evaluated at
    the step where they are used (``systems.schedules``). Systems attach this callback themselves (``configure_callbacks``), so
    every Trainer that fits one runs it, and a resumed run starts at its saved step. The step is the
    system's schedule step (``BaseSystem.schedule_step_of``: stretched by a time budget, offset by a
    sequence's earlier frames)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = pl_module.schedule_step_of(trainer.global_step)
        for module in pl_module.modules():
            if isinstance(module, StepHook):
                module.update_step(trainer.current_epoch, step)


class TimeBudget(pl.Callback):
    """Spend a training-time budget on as many steps as fit in it, with every schedule stretched to them.

    Lightning's ``max_time`` alone stops a run wherever the clock runs out, its schedules (learning-rate
    decay, encoder levels, annealing, loss weights) cut short or long finished. Here the run times its
    steps from ``skip_steps`` on (torch.compile and the first grid updates come before), plans at
    ``first_plan_step`` how many steps fit in the time left, sets the trainer's ``max_steps`` to that, and
    stretches the system's :class:`~systems.schedules.ScheduleClock` so the schedules, written for
    ``reference_steps``, end there. It re-plans every ``replan_fraction`` of the run from the mean step time
    so far (validation passes and grid updates included), until the last tenth. ``reserve`` of the budget is
    kept as a margin. The plan and the time spent are saved in checkpoints, so a resumed run continues
    them; with DDP, rank 0's plan is broadcast. ``clock`` is the time source (tests pass a fake one).
    """

    def __init__(self, budget_s: float, reference_steps: int, skip_steps: int = 10, first_plan_step: int = 30,
                 replan_fraction: float = 0.05, reserve: float = 0.01, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s, self.reference_steps = float(budget_s), int(reference_steps)
        self.skip_steps, self.first_plan_step = skip_steps, max(first_plan_step, skip_steps + 1)
        self.replan_fraction, self.reserve, self.clock = replan_fraction, reserve, clock
        self.spent_s = 0.0           # training time of earlier sessions of this run (resume)
        self.planned: int | None = None
        self._started = self._timed_from = 0.0
        self._timed_step = 0
        self._next_plan = self.first_plan_step

    def state_dict(self) -> dict[str, Any]:
        return {"spent_s": self.spent_s + self.clock() - self._started, "planned": self.planned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent_s, self.planned = float(state["spent_s"]), state["planned"]

    def seconds_left(self) -> float:
        """Training time left in the budget (less its reserve), counting earlier sessions of the run."""
        return self.budget_s * (1.0 - self.reserve) - self.spent_s - (self.clock() - self._started)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.clock.reference_steps = self.reference_steps  # the learning-rate horizon, in schedule steps

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self.clock()
        step = trainer.global_step
        self._timed_step, self._next_plan = step + self.skip_steps, step + self.first_plan_step
        if self.planned is not None:  # resumed: keep the plan until the step time is measured again
            trainer.fit_loop.epoch_loop.max_steps = self.planned

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._timed_step:
            self._timed_from = self.clock()
        if step < self._next_plan or step <= self._timed_step:
            return
        seconds_per_step = (self.clock() - self._timed_from) / (step - self._timed_step)
        left = self.seconds_left()
        planned = int(trainer.strategy.broadcast(step + max(int(left / seconds_per_step), 1)))
        if planned != self.planned:
            first = self.planned is None
            self.planned = planned
            trainer.fit_loop.epoch_loop.max_steps = planned
            pl_module.clock.plan(step, planned)
            if first:
                log.info("time budget %.0f s: %d steps fit (%.3f s a step over steps %d-%d); schedules written for %d steps "
                         "stretched x%.2f", self.budget_s, planned, seconds_per_step, self._timed_step, step, self.reference_steps,
                         planned / self.reference_steps)
        self._next_plan = step + max(int(self.replan_fraction * planned), 1)
        if step >= 0.9 * planned:
            self._next_plan = planned + 1  # no more re-planning in the last tenth

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        used = self.spent_s + self.clock() - self._started
        log.info("time budget: %d steps trained in %.0f of %.0f s", trainer.global_step, used, self.budget_s)


class ScaledSchedules(pl.Callback):
    """Stretch every step schedule, written for ``reference_steps``, to a run of ``max_steps`` steps, as
    :class:`TimeBudget` does for the steps that fit in a budget: a budgeted run's schedules, reproducible by step count."""

    def __init__(self, max_steps: int, reference_steps: int) -> None:
        self.max_steps, self.reference_steps = int(max_steps), int(reference_steps)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.clock.reference_steps = self.reference_steps  # the learning-rate horizon, in schedule steps

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.clock.planned_steps != self.max_steps:  # a resumed run's clock comes from its checkpoint
            pl_module.clock.plan(trainer.global_step, self.max_steps)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it, so a killed run never leaves a
    truncated ``last.ckpt`` behind; reads with ``weights_only=True`` whatever Lightning asks for, so
    restoring ``ckpt_path`` never unpickles code."""

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_weights(Path(path))

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))


class TrainTime(pl.Callback):
    """The run's training time in seconds, summed over every resume: it travels in the checkpoint
    (Lightning saves a callback's ``state_dict``). It counts from ``on_train_start``, so what happens
    in ``on_fit_start`` (NeuS's visual-hull carving) is not training time."""

    def __init__(self) -> None:
        self.before = 0.0  # seconds of earlier sessions (from the checkpoint)
        self.started: float | None = None
        self.ended: float | None = None

    @property
    def seconds(self) -> float:
        """Training time so far: earlier sessions plus this one up to now (or to its end)."""
        if self.started is None:
            return self.before
        return self.before + ((self.ended or time.time()) - self.started)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started, self.ended = time.time(), None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ended = time.time()

    def state_dict(self) -> dict[str, float]:
        return {"train_time_s": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before, self.started, self.ended = float(state_dict["train_time_s"]), None, None


def stop_reason(trainer: pl.Trainer) -> str:
    """One line saying which limit ended training: ``trainer.max_steps`` or ``trainer.max_time``."""
    step, max_steps = int(trainer.global_step), int(trainer.max_steps)
    if max_steps >= 0 and step >= max_steps:
        return f"training ended at step {step}: trainer.max_steps={max_steps} reached"
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining("train") if timer is not None else None
    if remaining is not None and remaining <= 0:
        return (f"training ended at step {step} of trainer.max_steps={max_steps}: trainer.max_time reached "
                "(raise trainer.max_time or set it to null for the full step count)")
    return f"training ended at step {step} of trainer.max_steps={max_steps} before either limit (trainer.should_stop was set)"


class StopReason(pl.Callback):
    """Logs :func:`stop_reason` when training ends."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log.info(stop_reason(trainer))


def resume_hint(run_dir: Path, mode: str = "train") -> str:
    """The last line of a run stopped by SIGTERM: how to continue it."""
    again = "" if mode == "train" else f" mode={mode}"
    return f"stopped by SIGTERM; continue with: python launch.py resume={run_dir}{again}"


def exit_on_sigterm(run_dir: Path, mode: str = "train") -> None:
    """From now on SIGTERM ends the process at the next Python instruction with exit status 143 and
    :func:`resume_hint`: for phases that write files only atomically and train nothing (the test phase,
    mode=export, mode=video), whose single calls of minutes Lightning's deferred SIGTERM cannot interrupt."""
    line = (resume_hint(run_dir, mode) + "\n").encode()

    def stop(signum: int, frame: Any) -> None:
        os.write(2, line)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


class TerminateTestOnSigterm(pl.Callback):
    """Lightning defers a SIGTERM to the end of the current batch, but the test phase's mesh export and
    Chamfer are single calls of minutes, so a plain ``kill`` went unanswered: from the test phase's start,
    :func:`exit_on_sigterm` (``run_dir``: the folder the hint names)."""

    def __init__(self, run_dir: Path, mode: str = "train") -> None:
        self.run_dir, self.mode = run_dir, mode

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        exit_on_sigterm(self.run_dir, self.mode)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}``: numbers, strings, booleans and None kept, the rest as text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as JSON."""
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


class MeshExport(pl.Callback):
    """Extracts the final mesh (world frame) when testing ends, and writes trainable cameras to
    ``cameras_path`` (NeuS/IDR layout) when the system has any; on rank 0 only. ``step``: the step the
    mesh is logged at (None: the trainer's; a run evaluated from a checkpoint passes the checkpoint's)."""

    def __init__(self, path: str | Path, settings: Export, cameras_path: str | Path | None = None, step: int | None = None) -> None:
        self.path, self.settings, self.step = Path(path), settings, step
        self.cameras_path = None if cameras_path is None else Path(cameras_path)
        # the marching-cubes grid: export.resolution, else 512 on a GPU and 192 on the CPU
        self.resolution = settings.resolution if settings.resolution is not None else 512 if torch.cuda.is_available() else 192
        self.texture_size = settings.texture_size if settings.texture else None

    def export(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Write the mesh (and what ``texture_size``, ``points`` and trainable cameras add); returns the result
        files: ``mesh``, and ``textured`` (a list) and ``points`` when written."""
        started = time.time()
        log.info("exporting the mesh: marching cubes on a %d^3 grid ...", self.resolution)
        vertices, faces = pl_module.export_mesh(self.path, self.resolution, self.settings.largest_component, self.settings.vertex_colors,
                                                self.settings.target_faces, self.texture_size, self.settings.points)
        log.info("mesh: %d vertices, %d faces in %.0f s -> %s", len(vertices), len(faces), time.time() - started, self.path)
        if self.settings.points:
            log.info("point cloud: %d points with normals and colours -> %s", self.settings.points if len(faces) else 0, point_cloud_path(self.path))
        if self.texture_size:
            log.info("textured mesh -> %s", ", ".join(str(p) for p in textured_files(self.path)))
        if self.cameras_path is not None and pl_module.trainable_cameras:
            pl_module.export_cameras(self.cameras_path)
        written: dict[str, Any] = {"mesh": str(self.path)}
        if self.texture_size:
            written["textured"] = [str(p) for p in textured_files(self.path)]
        if self.settings.points:
            written["points"] = str(point_cloud_path(self.path))
        return written

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:  # DDP: one process writes
            return
        self.export(pl_module)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_mesh") and self.path.exists():
            log_mesh(experiment, "mesh", self.path, int(trainer.global_step) if self.step is None else self.step)


def log_mesh(writer: Any, tag: str, path: str | Path, step: int, max_faces: int = TENSORBOARD_MAX_FACES) -> None:
    """Add the mesh file at ``path`` (with its vertex colours, if any) to a TensorBoard
    ``SummaryWriter``, decimated to ``max_faces`` faces (colours from the nearest kept vertex)."""
    mesh = trimesh.load(path, process=False, force="mesh")
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        return
    colors = mesh.visual.vertex_colors[:, :3] if mesh.visual.kind == "vertex" else np.full((len(vertices), 3), 200, np.uint8)
    if len(faces) > max_faces:
        kept, faces = decimate(vertices, faces, max_faces)
        colors = colors[cKDTree(vertices).query(kept)[1]]
        vertices = kept
    writer.add_mesh(tag, torch.from_numpy(vertices).float()[None], torch.from_numpy(np.ascontiguousarray(colors))[None],
                    torch.from_numpy(faces).int()[None], global_step=step)


class Evaluation(pl.Callback):
    """Aggregates held-out PSNR / IoU, computes the Chamfer distance of the exported mesh, and writes
    ``metrics.json``; on rank 0 only. ``protocol="masked"``: against the scene's ground truth, the
    prediction culled to the dilated masks; ``"dtu_official"``: DTU's own evaluation of ``scan`` with the
    files under ``dtu_dir`` (checked here, so a run without them stops before training)."""

    def __init__(self, run_dir: str | Path, mesh_path: str | Path, settings: Eval, scan: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.run_dir, self.mesh_path = Path(run_dir), Path(mesh_path)
        self.chamfer_points, self.max_dist, self.mask_dilation = settings.chamfer_points, settings.max_dist, settings.mask_dilation
        self.extra = extra or {}
        self.hparams: dict[str, Any] = {}  # the run's flattened config, logged with the final metrics (TensorBoard's HParams tab)
        self.metrics: dict[str, Any] = {}
        self.started = time.time()
        if settings.protocol == "dtu_official":  # the section checked its value and eval.dtu_dir; the files are checked here
            if scan is None:
                raise InputError("scan", "eval.protocol=dtu_official needs the DTU scan id")
            dtu_official_paths(settings.dtu_dir, scan)
        self.protocol, self.dtu_dir, self.scan = settings.protocol, settings.dtu_dir, scan

    def dtu_official(self) -> dict[str, float]:
        """DTU's official evaluation of the exported mesh (world millimetres): sampled densely, downsampled
        to ``DTU_DENSITY``, against the STL points with the observation mask and ground plane."""
        pred_v, pred_f = load_reference(self.mesh_path, allow_empty=True)
        reference = load_dtu_official(self.dtu_dir, self.scan)
        if pred_f is None or len(pred_f) == 0:
            return {"chamfer": self.max_dist, "accuracy": self.max_dist, "completeness": self.max_dist}
        log.info("DTU official evaluation of scan %d: sampling the mesh every %.1f mm ...", self.scan, DTU_DENSITY)
        points = downsample_points(sample_surface_grid(pred_v, pred_f, DTU_DENSITY), DTU_DENSITY)
        return dtu_official_distances(points, reference.stl, reference.obs_mask, reference.bb, reference.res,
                                      reference.plane, self.max_dist)

    def chamfer(self, pl_module: pl.LightningModule) -> dict[str, float]:
        if self.protocol == "dtu_official":
            return self.dtu_official() if self.mesh_path.exists() else {}
        scene = pl_module.scene
        if scene.gt_path is None or not self.mesh_path.exists():
            return {}
        pred_v, pred_f = load_reference(self.mesh_path, allow_empty=True)  # an empty mesh scores the cap
        gt_v, gt_f = load_reference(scene.gt_path)
        inv = np.linalg.inv(scene.scale_mat)
        masks = scene.masks

        def keep(points: np.ndarray) -> np.ndarray:
            if masks is None:
                return np.ones(len(points), dtype=bool)
            normalised = points @ inv[:3, :3].T + inv[:3, 3]
            return visible_in_masks(normalised, scene.intrinsics.cpu().numpy(), scene.c2w.cpu().numpy(),
                                    masks.cpu().numpy() > 0.5, self.mask_dilation)

        if pred_f is None or len(pred_f) == 0:
            return {"chamfer": self.max_dist, "accuracy": self.max_dist, "completeness": self.max_dist}
        log.info("Chamfer distance on %d points per side (about a minute per 200k points on 2 CPU cores) ...", self.chamfer_points)
        return chamfer_distance(pred_v, pred_f, gt_v, gt_f, n_points=self.chamfer_points, max_dist=self.max_dist, pred_keep=keep)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The config goes to the logger first: its ``hparams.yaml`` is written once, at its first save."""
        if self.hparams and trainer.logger is not None:
            trainer.logger.log_hyperparams(self.hparams)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.time()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:  # DDP: rank 0 holds every view's metrics (BaseSystem.on_test_epoch_end)
            return
        views = pl_module.test_metrics
        metrics: dict[str, Any] = {"step": int(trainer.global_step), **self.extra}
        for key in ("psnr", "iou"):
            values = [m[key] for m in views if key in m]
            if values:
                metrics[key] = float(np.mean(values))
        metrics["n_test_views"] = len(views)
        metrics["eval_downscale"] = int(pl_module.eval_downscale)
        metrics.update(pl_module.pose_metrics())
        chamfer = self.chamfer(pl_module)
        if chamfer:
            metrics.update(chamfer, protocol=self.protocol)
        if self.mesh_path.exists():
            metrics["mesh"] = str(self.mesh_path)
        if textured_files(self.mesh_path):
            metrics["textured"] = [str(p) for p in textured_files(self.mesh_path)]
        if point_cloud_path(self.mesh_path).is_file():
            metrics["points"] = str(point_cloud_path(self.mesh_path))
        metrics["eval_time_s"] = round(time.time() - self.started, 1)  # held-out views, mesh export (callbacks before) and Chamfer
        path = self.run_dir / "metrics.json"
        if path.exists():
            metrics = {**json.loads(path.read_text()), **metrics}
        write_json(path, metrics)
        if trainer.logger is not None:
            step = int(metrics["step"])  # a checkpoint's step in mode=test/eval
            scalars = {f"test/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
            trainer.logger.log_metrics(scalars, step=step)
            experiment = getattr(trainer.logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                for label, images in pl_module.test_renders.items():
                    for key, image in images.items():
                        experiment.add_image(f"test_{key}/{label}", image, step, dataformats="HWC" if image.ndim == 3 else "HW")
            if self.hparams:
                trainer.logger.log_hyperparams(self.hparams, {f"hparams/{k[5:]}": v for k, v in scalars.items()})
        self.metrics = metrics
