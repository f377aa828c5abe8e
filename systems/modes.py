"""What each ``mode=`` does with a composed config and its run directory (launch.py maps the modes to
these handlers): each returns the job's metrics, the dict that ``metrics.json`` and the summary show."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.errors import InputError
from datasets.scene import Scene
from datasets.sequence import Sequence
from systems.assembly import build_system, build_trainer, load_run, load_scene, mesh_filename, outputs, single_scene_mode
from systems.base import BaseSystem
from systems.callbacks import StopReason, TrainTime, exit_on_sigterm
from systems.config import Video, as_section
from systems.config import Viewer as ViewerSettings
from systems.visual_checks import inspect_init, transfer as transfer_appearance
from systems.run_dir import find_checkpoint, load_weights, remove_temporaries
from systems.sequence import run_sequence
from systems.video import render_videos
from systems.viewer import ViewerCallback, serve_run, serve_sequence

log = logging.getLogger("launch")


@dataclass
class Loaded:
    """A single scene's system, and the checkpoint it resumes (``ckpt``) or was loaded from (``checkpoint``)."""

    system: BaseSystem
    ckpt: Path | None        # the checkpoint file of ``resume=``; None: a fresh start
    checkpoint: dict | None  # its contents, loaded into ``system`` (all modes but train, which resumes through Lightning)

    @property
    def step(self) -> int:
        """The global step of the loaded checkpoint."""
        return int(self.checkpoint["global_step"])


def load(cfg: DictConfig, run_dir: Path, scene: Scene | Sequence | None = None) -> Loaded:
    """The system of ``cfg`` on ``scene`` (None: ``cfg.dataset``), with the weights of ``cfg.resume`` when the
    mode needs them (every mode but train and inspect_init requires one)."""
    data = load_scene(cfg) if scene is None else scene
    if isinstance(data, Sequence):
        raise single_scene_mode(cfg.mode)
    ckpt = find_checkpoint(cfg.resume)[1] if cfg.resume else None
    if cfg.mode not in ("train", "inspect_init") and ckpt is None:
        raise InputError("mode", f"mode={cfg.mode} needs resume=<run dir or checkpoint>")
    if ckpt is not None:
        for stale in remove_temporaries(run_dir):
            log.info("removed %s, left by an interrupted write", stale)
        log.info("resuming from %s", ckpt)
    # Training resumes through Lightning (optimiser and loops too); other modes need the weights only.
    checkpoint = load_weights(ckpt) if ckpt is not None and cfg.mode != "train" else None
    return Loaded(build_system(cfg, run_dir, checkpoint, scene=data), ckpt, checkpoint)


def transfer(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """mode=transfer: ``geometry_run``'s surface with ``appearance_run``'s colours, as a video."""
    if not (cfg.geometry_run and cfg.appearance_run):
        raise InputError("mode", "mode=transfer needs geometry_run=<run dir> and appearance_run=<run dir>")
    video = transfer_appearance(load_run(cfg.geometry_run), load_run(cfg.appearance_run), run_dir / "transfer")
    return {"video": str(video)}


def inspect_initial(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """mode=inspect_init: PNGs of the initial SDF."""
    return {"inspect": [str(p) for p in inspect_init(load(cfg, run_dir).system, run_dir / "inspect")]}


def video(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """mode=video: MP4s of RGB and normals of a trained run along ``cfg.video.path``."""
    loaded = load(cfg, run_dir)
    exit_on_sigterm(run_dir, cfg.mode)  # no Lightning loop here to defer a SIGTERM to
    videos = render_videos(loaded.system.eval(), run_dir / "video", as_section(Video, OmegaConf.to_container(cfg.video)))
    return {"step": loaded.step, "video": [str(p) for p in videos]}


def view(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """mode=view: serve a trained run (a sequence run: its frames, with a slider) in the browser until stopped."""
    data = load_scene(cfg)
    if isinstance(data, Sequence):
        if not cfg.resume:
            raise InputError("mode", "mode=view needs resume=<run dir>")
        return {"viewer": serve_sequence(data.load(0), run_dir, cfg.viewer.host, cfg.viewer.port)}
    loaded = load(cfg, run_dir, data)
    url = serve_run(loaded.system.eval(), run_dir, mesh_filename(cfg.export), cfg.viewer.host, cfg.viewer.port)
    return {"step": loaded.step, "viewer": url}


def export(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """mode=export: the mesh of a trained run (``export.*``)."""
    loaded = load(cfg, run_dir)
    exit_on_sigterm(run_dir, cfg.mode)  # no Lightning loop here to defer a SIGTERM to
    mesh_path = run_dir / "meshes" / mesh_filename(cfg.export)
    return {"step": loaded.step, **outputs(cfg, run_dir, mesh_path)[0].export(loaded.system)}


def fit(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """mode=train (a sequence: frame by frame), test (re-export and re-evaluate) or eval (metrics only, the
    mesh kept when there is one): then the mesh export and the evaluation of the test phase."""
    data = load_scene(cfg)
    if isinstance(data, Sequence):
        return run_sequence(cfg, run_dir, data)
    loaded = load(cfg, run_dir, data)
    system, ckpt = loaded.system, loaded.ckpt
    mesh_path = run_dir / "meshes" / mesh_filename(cfg.export)
    export_mesh, evaluation = outputs(cfg, run_dir, mesh_path)
    callbacks = [evaluation] if cfg.mode == "eval" and mesh_path.exists() else [export_mesh, evaluation]
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
        evaluation.extra = {"step": loaded.step}
        export_mesh.step = loaded.step
    trainer.test(system, verbose=False)
    return evaluation.metrics
