"""A live 3D viewer in the browser, on viser (https://viser.studio).

:class:`Viewer` serves a scene of a system: its cameras as frustums with image thumbnails, a mesh of
its surface and, for a finished run, its held-out renders beside their images. ``mode=view resume=RUN``
opens a finished run (:func:`serve_run`); ``viewer.enabled=true`` adds :class:`ViewerCallback` to
training, which re-meshes the current surface while a browser is connected and pauses on demand.
Everything is shown in the dataset's world frame, where the run's meshes are written.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytorch_lightning as pl
import torch
import trimesh
import viser
import viser.transforms as vtf

from systems.config import Viewer as ViewerSettings

log = logging.getLogger("viewer")
LOCALHOSTS = ("127.0.0.1", "localhost", "::1")
THUMBNAIL = 96  # longer side of the camera thumbnails, pixels


def world_poses(c2w: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """Camera-to-world (N, 4, 4) of the normalised frame -> the world frame of ``scale_mat`` (4, 4)
    (a similarity: its rotation turns the axes, its scale and translation move the centres)."""
    linear = scale_mat[:3, :3]
    scale = np.cbrt(np.linalg.det(linear))
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[:, :3, :3] = (linear / scale) @ out[:, :3, :3]
    out[:, :3, 3] = out[:, :3, 3] @ linear.T + scale_mat[:3, 3]
    return out


def camera_sets(system: Any) -> dict[str, np.ndarray]:
    """World c2w (N, 4, 4) of every view: ``cameras``, or with trainable cameras ``learned`` (aligned to the
    reference frame, as in cameras_refined.npz) and ``reference``."""
    ids = torch.arange(system.scene.n_views, device=system.device)
    with torch.no_grad():
        _, c2w = system.cameras(ids)
        sim = system.frame_alignment()
        if sim is None:
            return {"cameras": world_poses(c2w.double().cpu().numpy(), system.scene.scale_mat)}
        learned = sim.poses(c2w).double().cpu().numpy()
    reference = system.cameras.reference_c2w.double().cpu().numpy()
    return {name: world_poses(poses, system.scene.scale_mat) for name, poses in (("learned", learned), ("reference", reference))}


def thumbnail(image: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """A uint8 image (H, W, 3) in [0, 255] from ``image`` (H, W, 3) in [0, 1], its longer side at most ``size``."""
    step = max(1, int(np.ceil(max(image.shape[:2]) / size)))
    return (np.clip(image[::step, ::step], 0, 1) * 255).astype(np.uint8)


def colored_mesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> trimesh.Trimesh:
    """A trimesh of world vertices (V, 3), faces (F, 3) and vertex colours (V, 3) in [0, 1]."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    rgb = (np.clip(colors, 0, 1) * 255).astype(np.uint8)
    mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    return mesh


class Viewer:
    """A viser server on ``host:port`` (port 0: a free one; a port in use: the next free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in LOCALHOSTS:
            log.warning("viewer: serving on %s: anyone who can reach this machine can watch the run", host)
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.frustums: dict[str, list[Any]] = {}
        self.mesh: Any = None
        self.renders: list[Any] = []  # the GUI images of the held-out views
        log.info("viewer: open %s in a browser", self.url)

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.server.get_port()}"

    def connected(self) -> int:
        """How many browsers are connected."""
        return len(self.server.get_clients())

    def show_cameras(self, system: Any) -> None:
        """Frustums of the training and held-out views (green and orange; reference poses grey), with
        thumbnails of their images; the browser's first view looks at the object (:meth:`look_between`)."""
        scene = system.scene
        h, w = scene.hw
        fy = scene.intrinsics[:, 1, 1].double().cpu().numpy()
        centre = scene.scale_mat[:3, 3]
        sets = camera_sets(system)
        for name, poses in sets.items():
            size = 0.1 * float(np.median(np.linalg.norm(poses[:, :3, 3] - centre, axis=1)))
            handles = []
            for i, pose in enumerate(poses):
                split = "train" if i in scene.train_ids else "test"
                color = (150, 150, 150) if name == "reference" else (40, 170, 60) if split == "train" else (230, 120, 20)
                image = None if name == "reference" else thumbnail(scene.images[i].cpu().numpy())
                handles.append(self.server.scene.add_camera_frustum(
                    f"/{name}/{split}/view{i:03d}", fov=float(2 * np.arctan(h / (2 * fy[i]))), aspect=w / h, scale=size,
                    thickness=size * 0.03, color=color, image=image, wxyz=vtf.SO3.from_matrix(pose[:3, :3]).wxyz, position=pose[:3, 3]))
            self.frustums[name] = handles
        self.look_between(next(iter(sets.values()))[scene.train_ids[:2]], centre)

    def look_between(self, poses: np.ndarray, centre: np.ndarray) -> None:
        """Start the browser's view at the object ``centre`` (3,) from between the cameras ``poses`` (K, 4, 4)
        (not through one, whose frustum would hide the object), 1.2 times as far, with their mean up direction."""
        offsets = poses[:, :3, 3] - centre
        direction = (offsets / np.linalg.norm(offsets, axis=1, keepdims=True)).mean(0)
        distance = 1.2 * float(np.linalg.norm(offsets, axis=1).mean())
        up = -poses[:, :3, 1].mean(0)  # OpenCV cameras: y points down
        self.server.scene.set_up_direction(tuple(up / np.linalg.norm(up)))
        self.server.initial_camera.position = tuple(centre + distance * direction / np.linalg.norm(direction))
        self.server.initial_camera.look_at = tuple(centre)
        self.server.initial_camera.up = tuple(up / np.linalg.norm(up))

    def show_mesh(self, mesh: trimesh.Trimesh) -> None:
        """Show ``mesh`` (world frame) as ``/mesh``, replacing the one shown."""
        self.mesh = self.server.scene.add_mesh_trimesh("/mesh", mesh)

    def show_glb(self, path: Path) -> None:
        """Show a glTF binary (a textured mesh) as ``/mesh``, replacing the one shown."""
        self.mesh = self.server.scene.add_glb("/mesh", path.read_bytes())

    def show_renders(self, system: Any, render_dir: Path) -> None:
        """Each held-out view's image beside its renders (``render_dir/viewNNN_{rgb,normal,depth}.png``) in a GUI folder."""
        with self.server.gui.add_folder("Held-out views (image | rgb | normal | depth)"):
            for view in system.scene.test_ids:
                files = [render_dir / f"view{view:03d}_{key}.png" for key in ("rgb", "normal", "depth")]
                if not all(f.is_file() for f in files):
                    continue
                renders = [iio.imread(f) for f in files]
                h, w = renders[0].shape[:2]
                image = thumbnail(system.scene.images[view].cpu().numpy(), max(h, w))
                row = [image] + [np.repeat(r[..., None], 3, -1) if r.ndim == 2 else r[..., :3] for r in renders]
                self.renders.append(self.server.gui.add_image(np.concatenate([r[:h, :w] for r in row], 1), label=f"view {view}"))

    def close(self) -> None:
        self.server.stop()


def open_run(viewer: Viewer, system: Any, run_dir: Path, mesh_name: str) -> None:
    """Show a finished run: its cameras, its mesh ``run_dir/meshes/mesh_name`` (the textured
    ``<stem>_textured.glb`` when it exists) and its held-out renders."""
    mesh_path = run_dir / "meshes" / mesh_name
    textured = mesh_path.with_name(f"{mesh_path.stem}_textured.glb")
    viewer.show_cameras(system)
    if textured.is_file():
        viewer.show_glb(textured)
    elif mesh_path.is_file():
        viewer.show_mesh(trimesh.load(mesh_path, process=False, force="mesh"))
    else:
        log.warning("viewer: %s not found; showing the cameras only", mesh_path)
    viewer.show_renders(system, run_dir / "renders")


def serve_run(system: Any, run_dir: Path, mesh_name: str, host: str, port: int) -> str:
    """``mode=view``: serve :func:`open_run` until SIGINT (Ctrl-C) or SIGTERM; returns the address it served."""
    viewer = Viewer(host, port)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        open_run(viewer, system, run_dir, mesh_name)
        log.info("viewer: serving %s until Ctrl-C", run_dir)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        viewer.close()
    return viewer.url


class ViewerCallback(pl.Callback):
    """``viewer.enabled=true``: serve the training run. Every ``refresh_every`` steps while a browser is
    connected, the surface is re-meshed at ``mesh_resolution`` with vertex colours and replaced in place
    (with none connected nothing is extracted); the step, losses and time left are shown, and a button
    pauses training (the callback waits before the next step) until pressed again."""

    def __init__(self, settings: ViewerSettings) -> None:
        self.settings = settings
        self.viewer: Viewer | None = None
        self.paused = False
        self.started = 0.0
        self.meshed_step = -1  # the step of the mesh shown (-1: none)
        self.shown_at = 0.0    # when the status text was last updated

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.viewer = Viewer(self.settings.host, self.settings.port)
        self.viewer.show_cameras(pl_module)
        gui = self.viewer.server.gui
        self.status = gui.add_markdown("starting")
        self.button = gui.add_button("Pause training")

        self.button.on_click(lambda _: self.toggle_pause())
        self.started = time.time()

    def toggle_pause(self) -> None:
        """The button: pause training before its next step, or resume it."""
        self.paused = not self.paused
        self.button.label = "Resume training" if self.paused else "Pause training"

    def refresh_mesh(self, pl_module: Any, step: int) -> None:
        """Re-mesh the current surface at ``mesh_resolution`` and replace the mesh shown (of training step ``step``)."""
        vertices, faces = pl_module.surface(self.settings.mesh_resolution)
        self.meshed_step = step
        if not len(faces):  # no zero crossing yet: keep the mesh shown
            return
        world = pl_module.to_world(vertices.astype(np.float64))
        self.viewer.show_mesh(colored_mesh(world, faces, pl_module.point_colors(vertices)))
        log.info("viewer: showing the mesh of step %d (%d faces)", step, len(faces))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        while self.viewer is not None and self.paused and not trainer.received_sigterm:
            time.sleep(0.05)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.viewer is None or not self.viewer.connected():
            return
        step = trainer.global_step
        if self.meshed_step < 0 or step - self.meshed_step >= self.settings.refresh_every:
            self.refresh_mesh(pl_module, step)
        if time.time() - self.shown_at > 0.5:
            self.show_status(trainer)

    def show_status(self, trainer: pl.Trainer) -> None:
        """The step, the latest losses and the time left (at the mean step time so far)."""
        step, total = trainer.global_step, trainer.max_steps
        elapsed = time.time() - self.started
        left = elapsed / max(step, 1) * max(total - step, 0)
        losses = {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        lines = [f"**step** {step} / {total}, {elapsed:.0f} s, about {left:.0f} s left\n", f"mesh of step {self.meshed_step}\n"]
        lines += [f"- {k}: {v:.4g}" for k, v in sorted(losses.items())]
        self.status.content = "\n".join(lines)
        self.shown_at = time.time()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.viewer is not None:
            self.viewer.close()
            self.viewer = None
