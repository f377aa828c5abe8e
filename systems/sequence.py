"""Dynamic scenes trained frame by frame, as NeuS2 does (Wang et al., ICCV 2023): the first frame
from scratch; every next frame warm-started from the previous one's weights, after a short phase
that fits only the object's rigid motion since that frame (:class:`models.motion.RigidMotion`,
accumulated over the frames and applied to the rays), so the field keeps one canonical frame and
only learns what is not rigid.

A sequence run directory holds ``frames/frame_XXXX/`` (each frame's checkpoints, metrics.json,
held-out renders, TensorBoard), ``meshes/frame_XXXX.ply`` (world frame), ``frames.csv`` and
``metrics.json`` (the per-frame table and its summary) and ``video/sequence.mp4``. A frame whose
``metrics.json`` exists is done; a resumed run continues the first frame that is not, from its own
newest checkpoint when it has one.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import InputError
from core.io import atomic_write
from datasets.scene import Scene
from datasets.sequence import Sequence
from models.cameras import FixedCameras, rotation_angle_deg
from models.motion import MovingObjectCameras, RigidMotion
from systems.assembly import build_system, build_trainer, outputs, single_scene_mode
from systems.base import BaseSystem
from systems.callbacks import write_json
from systems.config import SequenceSettings, as_section
from systems.run_dir import load_weights, newest_checkpoint, remove_temporaries
from systems.video import write_video

log = logging.getLogger(__name__)
TABLE_KEYS = ("frame", "steps", "motion_steps", "train_time_s", "chamfer", "accuracy", "completeness", "psnr", "iou",
              "motion_rotation_error_deg", "motion_translation_error")


def frame_dir(run_dir: Path, i: int) -> Path:
    """The folder of frame ``i`` in a sequence run directory."""
    return run_dir / "frames" / f"frame_{i:04d}"


def moving_cameras(cameras: torch.nn.Module) -> MovingObjectCameras:
    """``cameras`` seen from the canonical frame of an object whose motion starts at the identity."""
    return MovingObjectCameras(cameras, RigidMotion())


def warm_start(system: BaseSystem, state_dict: dict[str, torch.Tensor]) -> None:
    """Load the previous frame's weights (``state_dict``) into ``system``, all but its cameras (each
    frame has its own), and start its object motion where the previous frame's ended."""
    own = {k: v for k, v in state_dict.items() if not k.startswith("cameras.")}
    missing, unexpected = system.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.startswith("cameras.")]
    if missing or unexpected:
        raise InputError("sequence", f"the previous frame's weights do not fit this frame's model (missing {missing[:3]}, "
                                     f"unexpected {unexpected[:3]}); were the system or encoder changed mid-sequence?")
    previous = RigidMotion()
    previous.load_state_dict({k.removeprefix("cameras.motion."): v for k, v in state_dict.items() if k.startswith("cameras.motion.")})
    motion = system.object_motion
    with torch.no_grad():
        motion.base.copy_(previous.matrix())
        motion.rotation.zero_()
        motion.translation.zero_()


def set_trainable(system: BaseSystem, motion_only: bool) -> None:
    """Train only the object's motion (``motion_only``), or everything but it."""
    system.requires_grad_(not motion_only)
    system.object_motion.requires_grad_(motion_only)


def motion_errors(learned: torch.Tensor, truth: np.ndarray, first: np.ndarray) -> dict[str, float]:
    """How far a learned object motion (4, 4), which starts at frame 0's pose, is from the true motion since
    frame 0, ``truth @ inverse(first)`` (4, 4 each): rotation (degrees) and translation (normalised units)."""
    true = torch.from_numpy(truth @ np.linalg.inv(first)).to(learned)
    angle = rotation_angle_deg(learned[None, :3, :3], true[None, :3, :3])[0]
    return {"motion_rotation_error_deg": float(angle), "motion_translation_error": float((learned[:3, 3] - true[:3, 3]).norm())}


def slim_checkpoints(folder: Path) -> None:
    """A finished frame keeps one checkpoint, ``last.ckpt``, without optimiser state (weights for the
    next frame, re-export and evaluation): the step checkpoints of 20 frames would take gigabytes."""
    last = folder / "last.ckpt"
    if not last.is_file():
        return
    checkpoint = load_weights(last)
    if checkpoint.pop("optimizer_states", None) is not None:
        checkpoint.pop("lr_schedulers", None)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(last, buffer.getvalue())
    for path in folder.glob("*.ckpt"):
        if path.name != "last.ckpt":
            path.unlink()


def video_frame(frame_folder: Path, view: int) -> np.ndarray | None:
    """Held-out view ``view``'s render of a finished frame, RGB and normals side by side (H, 2W, 3), or None."""
    paths = [frame_folder / "renders" / f"view{view:03d}_{key}.png" for key in ("rgb", "normal")]
    if not all(p.is_file() for p in paths):
        return None
    return np.concatenate([iio.imread(p)[..., :3] for p in paths], axis=1)


def write_table(run_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``frames.csv`` (one row per frame) and ``metrics.json`` (the rows and their summary); returns the latter."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[k for k in TABLE_KEYS if any(k in r for r in rows)], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(run_dir / "frames.csv", buffer.getvalue().encode())
    summary: dict[str, Any] = {"n_frames": len(rows), "steps": sum(int(r["steps"]) + int(r.get("motion_steps", 0)) for r in rows),
                               "train_time_s": round(sum(float(r.get("train_time_s", 0.0)) for r in rows), 1)}
    for key in ("chamfer", "psnr", "iou"):
        values = [float(r[key]) for r in rows if key in r]
        if values:
            summary |= {f"{key}_mean": float(np.mean(values)), f"{key}_max": float(np.max(values)), f"{key}_min": float(np.min(values))}
    metrics = {**summary, "frames": rows}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def run_sequence(cfg: DictConfig, run_dir: Path, sequence: Sequence) -> dict[str, Any]:
    """mode=train of a dynamic scene: refuse what a sequence cannot do, then :func:`train_sequence`."""
    if cfg.mode != "train":
        raise single_scene_mode(cfg.mode)
    if cfg.viewer.enabled:
        raise InputError("viewer.enabled", "the live viewer shows single scenes; open a sequence run with mode=view resume=RUN")
    return train_sequence(cfg, sequence, run_dir)


def frame_system(cfg: DictConfig, scene: Scene, folder: Path) -> BaseSystem:
    """The system of ``cfg`` on one frame's ``scene``, its cameras a :class:`MovingObjectCameras`."""
    system = build_system(cfg, folder, scene=scene)
    if not isinstance(system.cameras, FixedCameras):
        raise InputError("camera", "a sequence trains with calibrated cameras (camera=fixed)")
    system.cameras = moving_cameras(system.cameras)
    return system


def frame_trainer(cfg: DictConfig, run_dir: Path, folder: Path, steps: int, callbacks: list[pl.Callback],
                  checkpoints: bool) -> pl.Trainer:
    """Lightning's trainer of ``cfg`` for ``steps`` steps of one frame in ``folder`` (``checkpoints``: with the
    checkpoint callback); a SIGTERM names the sequence's ``run_dir``, which resumes as a whole."""
    frame = cfg.copy()
    frame.trainer.max_steps = steps
    if not checkpoints:
        frame.callbacks.checkpoint = None
    return build_trainer(frame, folder, callbacks, resume_dir=run_dir)


@dataclass
class Frame:
    """What one frame of a sequence trains: ``index``, in ``folder``, ``steps`` steps continuing the schedules
    from ``offset``, warm-started from the checkpoint ``previous`` (None: from scratch) after ``motion_steps``
    steps that fit only the object's rigid motion."""

    index: int
    folder: Path
    steps: int
    motion_steps: int
    offset: int
    previous: Path | None


def train_sequence(cfg: DictConfig, sequence: Sequence, run_dir: Path) -> dict[str, Any]:
    """Train every frame of ``sequence`` in turn into ``run_dir`` (layout in the module docstring) as ``cfg``
    (its ``sequence`` section: the steps per frame) says. Returns the summary written to ``metrics.json``."""
    settings = as_section(SequenceSettings, OmegaConf.to_container(cfg.sequence))
    rows: list[dict[str, Any]] = []
    previous: Path | None = None  # the last checkpoint of the frame before
    offset = 0  # steps trained by the frames this one continues (their schedules go on from there)
    for i in range(len(sequence)):
        folder = frame_dir(run_dir, i)
        warm = settings.warm_start and i > 0
        steps = settings.next_frame_steps if warm else settings.first_frame_steps
        done = folder / "metrics.json"
        if not done.is_file():
            frame = Frame(i, folder, steps, settings.global_motion_steps if warm else 0, offset if warm else 0,
                          previous if warm else None)
            rows.append(train_frame(cfg, sequence, frame, run_dir))
        else:
            rows.append(json.loads(done.read_text()))
            log.info("frame %d of %d: done before (%s)", i, len(sequence), done)
        slim_checkpoints(folder / "checkpoints")
        previous = folder / "checkpoints" / "last.ckpt"
        offset = offset + steps if warm else steps
        metrics = write_table(run_dir, rows)
    frames = [f for f in (video_frame(frame_dir(run_dir, i), int(r["video_view"])) for i, r in enumerate(rows)
                          if "video_view" in r) if f is not None]
    if frames:
        h, w = (s - s % 2 for s in frames[0].shape[:2])  # H.264 wants even sizes
        metrics["video"] = str(write_video(run_dir / "video" / "sequence.mp4", np.stack([f[:h, :w] for f in frames]), settings.fps))
        write_json(run_dir / "metrics.json", metrics)
    return metrics


def train_frame(cfg: DictConfig, sequence: Sequence, frame: Frame, run_dir: Path) -> dict[str, Any]:
    """Train, export and evaluate ``frame`` of ``sequence``: continued from its own newest checkpoint when it
    has one, else as ``frame`` says. Returns its row of the table (also its ``metrics.json``)."""
    started = time.time()
    i, folder, previous, motion_steps = frame.index, frame.folder, frame.previous, frame.motion_steps
    scene = sequence.load(i)
    system = frame_system(cfg, scene, folder)
    system.step_offset = frame.offset
    for stale in remove_temporaries(folder):
        log.info("removed %s, left by an interrupted write", stale)
    try:
        resume = newest_checkpoint(folder / "checkpoints") if (folder / "checkpoints").is_dir() else None
    except InputError:
        resume = None
    log.info("frame %d of %d: %s%s", i, len(sequence), "resuming from %s" % resume if resume else
             ("warm start from %s" % previous if previous else "from scratch"), f", {motion_steps} motion steps first" if
             motion_steps and not resume else "")
    if resume is None and previous is not None:
        warm_start(system, load_weights(previous)["state_dict"])
        if motion_steps:
            set_trainable(system, motion_only=True)
            frame_trainer(cfg, run_dir, folder, motion_steps, [], False).fit(system)
    set_trainable(system, motion_only=False)
    export, evaluation = outputs(cfg, folder, run_dir / "meshes" / f"frame_{i:04d}.ply")
    trainer = frame_trainer(cfg, run_dir, folder, frame.steps, [export, evaluation], True)
    trainer.fit(system, ckpt_path=str(resume) if resume else None, weights_only=True)
    trainer.save_checkpoint(folder / "checkpoints" / "last.ckpt")
    row: dict[str, Any] = {"frame": i, "steps": frame.steps, "motion_steps": motion_steps if previous is not None else 0,
                           "train_time_s": round(time.time() - started, 1)}
    if scene.test_ids:
        row["video_view"] = int(scene.test_ids[0])
    if sequence.motions is not None and (previous is not None or i == 0):  # a frame from scratch has no motion to find
        with torch.no_grad():
            row |= motion_errors(system.object_motion.matrix(), sequence.motions[i], sequence.motions[0])
    evaluation.extra = row
    trainer.test(system, verbose=False)
    return {**evaluation.metrics, **row}
