"""A live 3D viewer in the browser, on viser (https://viser.studio).

:class:`Viewer` serves a scene of a system: its cameras as frustums with image thumbnails, a mesh of
its surface and, for a finished run, its held-out renders beside their images. ``mode=view resume=RUN``
opens a finished run (:func:`serve_run`; a sequence run with a frame slider, :func:`serve_sequence`);
``viewer.enabled=true`` adds :class:`ViewerCallback` to training, which re-meshes the current surface while
a browser is connected, renders the browser's view on demand a chunk between training steps
(:class:`ChunkedRender`) and pauses on demand. Everything is shown in the dataset's world frame, where the
run's meshes are written.
"""
from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import imageio.v3 as iio
import numpy as np
import pytorch_lightning as pl
import torch
import trimesh
import viser
import viser.transforms as vtf

from datasets.scene import Scene
from core.geometry import RayBundle, image_rays
from systems.callbacks import TimeBudget
from systems.config import Viewer as ViewerSettings

log = logging.getLogger("viewer")
LOCALHOSTS = ("127.0.0.1", "localhost", "::1")
THUMBNAIL = 96  # longer side of the camera thumbnails, pixels
RENDER_BUDGET_S = 0.1  # the longest a chunk of a live render may hold up training
FIRST_CHUNK = 16  # rays in a live render's first chunk; each next one at most doubles, to what fits the budget


def world_poses(c2w: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """Camera-to-world (N, 4, 4) of the normalised frame -> the world frame of ``scale_mat`` (4, 4)
    (a similarity: its rotation turns the axes, its scale and translation move the centres)."""
    linear = scale_mat[:3, :3]
    scale = np.cbrt(np.linalg.det(linear))
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[:, :3, :3] = (linear / scale) @ out[:, :3, :3]
    out[:, :3, 3] = out[:, :3, 3] @ linear.T + scale_mat[:3, 3]
    return out


def normalised_pose(pose: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """The inverse of :func:`world_poses` for one camera-to-world (4, 4): world frame -> normalised frame."""
    linear = scale_mat[:3, :3]
    out = np.eye(4)
    out[:3, :3] = (linear / np.cbrt(np.linalg.det(linear))).T @ pose[:3, :3]
    out[:3, 3] = np.linalg.solve(linear, pose[:3, 3] - scale_mat[:3, 3])
    return out


def browser_view(camera: Any, scale_mat: np.ndarray, longer: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Intrinsics (3, 3), normalised camera-to-world (4, 4), height and width of a browser's camera (a viser
    ``CameraHandle``: an OpenCV pose in the world frame, a vertical field of view, the window's aspect ratio)
    rendered at ``longer`` pixels on its longer side."""
    aspect = float(camera.aspect)
    h, w = (max(round(longer / aspect), 1), longer) if aspect >= 1 else (longer, max(round(longer * aspect), 1))
    f = h / (2 * np.tan(float(camera.fov) / 2))
    intrinsics = np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = vtf.SO3(np.asarray(camera.wxyz, dtype=np.float64)).as_matrix()
    pose[:3, 3] = camera.position
    return intrinsics, normalised_pose(pose, scale_mat), h, w


class ChunkedRender:
    """An image rendered a chunk of rays at a time, so training goes on between chunks: each chunk is sized
    from the rays per second measured on the one before to take about ``budget_s`` (growing at most twice
    per chunk, from ``first_chunk``). ``render(rays)`` returns at least rgb (R, 3); ``clock`` is the time
    source (tests pass a fake one). Pixels not rendered yet are grey."""

    def __init__(self, render: Callable[[RayBundle], dict[str, torch.Tensor]], rays: RayBundle, hw: tuple[int, int],
                 budget_s: float = RENDER_BUDGET_S, first_chunk: int = FIRST_CHUNK, clock: Callable[[], float] = time.perf_counter) -> None:
        self.render, self.rays, self.hw, self.budget_s, self.clock = render, rays, hw, budget_s, clock
        self.rgb = np.full((len(rays), 3), 0.5, np.float32)
        self.done = 0
        self.chunk = first_chunk
        self.chunks: list[tuple[int, float]] = []  # (rays, seconds) of each chunk rendered

    @property
    def finished(self) -> bool:
        return self.done >= len(self.rays)

    def step(self) -> None:
        """Render the next chunk of rays; then size the chunk after it."""
        n = min(self.chunk, len(self.rays) - self.done)
        started = self.clock()
        out = self.render(RayBundle(self.rays.origins[self.done:self.done + n], self.rays.directions[self.done:self.done + n]))
        seconds = self.clock() - started
        self.rgb[self.done:self.done + n] = out["rgb"].detach().float().cpu().numpy()
        self.done += n
        self.chunks.append((n, seconds))
        self.chunk = max(min(2 * n, int(n * self.budget_s / max(seconds, 1e-9))), 1)

    def image(self) -> np.ndarray:
        """The image so far, uint8 (H, W, 3)."""
        return (np.clip(self.rgb, 0, 1) * 255).astype(np.uint8).reshape(*self.hw, 3)


def render_of(system: Any, intrinsics: np.ndarray, c2w: np.ndarray, height: int, width: int) -> ChunkedRender:
    """A :class:`ChunkedRender` of ``system`` from a camera of the normalised frame, intrinsics (3, 3) and c2w (4, 4),
    rendered as the held-out views are (evaluation mode, no gradients)."""
    intrinsics_t, c2w_t = (torch.as_tensor(a, dtype=torch.float32, device=system.device) for a in (intrinsics, c2w))
    rays = image_rays(intrinsics_t, c2w_t, height, width)

    def render(chunk: RayBundle) -> dict[str, torch.Tensor]:
        training = system.training
        system.eval()
        try:
            with torch.no_grad():
                return system.render_chunked(chunk)
        finally:
            system.train(training)

    return ChunkedRender(render, rays, (height, width))


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

    def show_cameras(self, scene: Scene, sets: dict[str, np.ndarray] | None = None) -> None:
        """Frustums of the training and held-out views (green and orange; reference poses grey), with
        thumbnails of their images; the browser's first view looks at the object (:meth:`look_between`).
        ``sets``: world c2w (N, 4, 4) by name (:func:`camera_sets`; None: the scene's own cameras)."""
        h, w = scene.hw
        fy = scene.intrinsics[:, 1, 1].double().cpu().numpy()
        centre = scene.scale_mat[:3, 3]
        if sets is None:
            sets = {"cameras": world_poses(scene.c2w.double().cpu().numpy(), scene.scale_mat)}
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

    def show_mesh_file(self, path: Path) -> bool:
        """Show the mesh file ``path`` (world frame), or its textured ``<stem>_textured.glb`` when that exists, as
        ``/mesh``; False (and nothing shown) when neither exists."""
        textured = path.with_name(f"{path.stem}_textured.glb")
        if textured.is_file():
            self.show_glb(textured)
        elif path.is_file():
            self.show_mesh(trimesh.load(path, process=False, force="mesh"))
        else:
            if self.mesh is not None:
                self.mesh.remove()
            self.mesh = None
            return False
        return True

    def show_renders(self, system: Any, render_dir: Path) -> None:
        """Each held-out view's image beside its renders (``render_dir/<view label>_{rgb,normal,depth}.png``, as
        the test phase writes them) in a GUI folder."""
        scene = system.scene
        with self.server.gui.add_folder("Held-out views (image | rgb | normal | depth)"):
            for view in scene.test_ids:
                files = [render_dir / f"{scene.view_label(view)}_{key}.png" for key in ("rgb", "normal", "depth")]
                if not all(f.is_file() for f in files):
                    continue
                renders = [iio.imread(f) for f in files]
                h, w = renders[0].shape[:2]
                image = thumbnail(scene.images[view].cpu().numpy(), max(h, w))
                row = [image] + [np.repeat(r[..., None], 3, -1) if r.ndim == 2 else r[..., :3] for r in renders]
                self.renders.append(self.server.gui.add_image(np.concatenate([r[:h, :w] for r in row], 1),
                                                              label=scene.view_label(view)))

    def close(self) -> None:
        self.server.stop()


def open_run(viewer: Viewer, system: Any, run_dir: Path, mesh_name: str) -> None:
    """Show a finished run: its cameras, its mesh ``run_dir/meshes/mesh_name`` (the textured
    ``<stem>_textured.glb`` when it exists) and its held-out renders."""
    viewer.show_cameras(system.scene, camera_sets(system))
    if not viewer.show_mesh_file(run_dir / "meshes" / mesh_name):
        log.warning("viewer: %s not found; showing the cameras only", run_dir / "meshes" / mesh_name)
    viewer.show_renders(system, run_dir / "renders")


FRAME_MESH = re.compile(r"frame_(\d+)\.ply")  # a sequence run's meshes/frame_XXXX.ply (systems/sequence.py)


def open_sequence(viewer: Viewer, scene: Scene, run_dir: Path) -> Any:
    """Show a sequence run: the cameras of ``scene`` (its first frame) and a frame slider that shows each frame's
    mesh ``run_dir/meshes/frame_XXXX.ply`` (or its textured .glb), replacing the one shown. Returns the slider,
    None when no frame has a mesh yet."""
    viewer.show_cameras(scene)
    meshes = {int(m.group(1)): p for p in (run_dir / "meshes").glob("frame_*.ply") if (m := FRAME_MESH.fullmatch(p.name))}
    if not meshes:
        log.warning("viewer: no frame meshes in %s; showing the cameras only", run_dir / "meshes")
        return None
    first, last = min(meshes), max(meshes)
    slider = viewer.server.gui.add_slider("frame", min=first, max=max(last, first + 1), step=1, initial_value=first,
                                          disabled=first == last)

    def show(frame: int) -> None:
        if not viewer.show_mesh_file(meshes.get(frame, run_dir / "meshes" / f"frame_{frame:04d}.ply")):
            log.warning("viewer: frame %d has no mesh", frame)

    slider.on_update(lambda event: show(int(event.target.value)))
    show(first)
    log.info("viewer: frames %d-%d of %s", first, last, run_dir)
    return slider


def serve(show: Callable[[Viewer], Any], run_dir: Path, host: str, port: int) -> str:
    """Serve what ``show(viewer)`` puts in a new viewer until SIGINT (Ctrl-C) or SIGTERM; returns the address it served."""
    viewer = Viewer(host, port)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        show(viewer)
        log.info("viewer: serving %s until Ctrl-C", run_dir)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        viewer.close()
    return viewer.url


def serve_run(system: Any, run_dir: Path, mesh_name: str, host: str, port: int) -> str:
    """``mode=view`` of a single scene: :func:`serve` of :func:`open_run`."""
    return serve(lambda viewer: open_run(viewer, system, run_dir, mesh_name), run_dir, host, port)


def serve_sequence(scene: Scene, run_dir: Path, host: str, port: int) -> str:
    """``mode=view`` of a sequence run: :func:`serve` of :func:`open_sequence` (``scene``: its first frame)."""
    return serve(lambda viewer: open_sequence(viewer, scene, run_dir), run_dir, host, port)


class ViewerCallback(pl.Callback):
    """``viewer.enabled=true``: serve the training run. While a browser is connected, every ``refresh_every``
    steps the surface is re-meshed at ``mesh_resolution`` with vertex colours and replaced in place, and the
    step, losses and time left are shown; "Render view" renders the browser's view at ``render_resolution``
    into the panel, a chunk after each step (:class:`ChunkedRender`: about ``RENDER_BUDGET_S`` a chunk).
    "Pause training" holds training after its current step until pressed again (a requested render goes on
    meanwhile). With no browser connected it only checks for one."""

    def __init__(self, settings: ViewerSettings) -> None:
        self.settings = settings
        self.viewer: Viewer | None = None
        self.paused = False
        self.resumed = threading.Event()  # set while not paused: the paused loop sleeps on it
        self.resumed.set()
        self.started = 0.0
        self.meshed_step = -1  # the step of the mesh shown (-1: none)
        self.shown_at = 0.0    # when the status text was last updated
        self.requested: tuple[np.ndarray, np.ndarray, int, int] | None = None  # a browser's view to render next
        self.render: ChunkedRender | None = None  # the render under way or shown
        self.render_image: Any = None             # its image in the panel
        self.scale_mat = np.eye(4)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.viewer = Viewer(self.settings.host, self.settings.port)
        self.viewer.show_cameras(pl_module.scene, camera_sets(pl_module))
        self.scale_mat = pl_module.scene.scale_mat
        gui = self.viewer.server.gui
        self.status = gui.add_markdown("starting")
        self.button = gui.add_button("Pause training")
        self.button.on_click(lambda _: self.toggle_pause())
        self.render_button = gui.add_button("Render view")
        self.render_button.on_click(lambda event: self.request_render(event.client.camera))
        self.started = time.time()

    def toggle_pause(self) -> None:
        """The pause button: hold training after its current step, or let it go on."""
        self.paused = not self.paused
        (self.resumed.clear if self.paused else self.resumed.set)()
        self.button.label = "Resume training" if self.paused else "Pause training"

    def request_render(self, camera: Any) -> None:
        """The render button: render ``camera`` (a browser's, as it is now) from the next step on, replacing
        any render under way."""
        self.requested = browser_view(camera, self.scale_mat, self.settings.render_resolution)

    @property
    def rendering(self) -> bool:
        """Whether a render is requested or under way."""
        return self.requested is not None or (self.render is not None and not self.render.finished)

    def render_chunk(self, pl_module: Any) -> None:
        """Start a requested render, or render the next chunk of the one under way, and show it in the panel."""
        if self.requested is not None:
            self.render, self.requested = render_of(pl_module, *self.requested), None
        if self.render is None or self.render.finished:
            return
        self.render.step()
        if self.render_image is None:
            self.render_image = self.viewer.server.gui.add_image(self.render.image(), label="render of the browser's view")
        else:
            self.render_image.image = self.render.image()

    def refresh_mesh(self, pl_module: Any, step: int) -> None:
        """Re-mesh the current surface at ``mesh_resolution`` and replace the mesh shown (of training step ``step``)."""
        vertices, faces = pl_module.surface(self.settings.mesh_resolution)
        self.meshed_step = step
        if not len(faces):  # no zero crossing yet: keep the mesh shown
            return
        world = pl_module.to_world(vertices.astype(np.float64))
        self.viewer.show_mesh(colored_mesh(world, faces, pl_module.point_colors(vertices)))
        log.info("viewer: showing the mesh of step %d (%d faces)", step, len(faces))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.viewer is None:
            return
        if self.viewer.connected():
            step = trainer.global_step
            if self.meshed_step < 0 or step - self.meshed_step >= self.settings.refresh_every:
                self.refresh_mesh(pl_module, step)
            self.render_chunk(pl_module)
            if self.paused or time.time() - self.shown_at > 0.5:
                self.show_status(trainer)
        self.wait_while_paused(trainer, pl_module)

    def wait_while_paused(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Hold training while paused (until resumed or SIGTERM): rendering a requested view meanwhile,
        else asleep until the button wakes it (checking for SIGTERM twice a second)."""
        while self.paused and not trainer.received_sigterm:
            if self.rendering and self.viewer.connected():
                self.render_chunk(pl_module)
            else:
                self.resumed.wait(0.5)

    def show_status(self, trainer: pl.Trainer) -> None:
        """The step, the latest losses and the time left: in the time budget (``trainer.max_time`` without
        ``max_steps``), else at the mean step time so far."""
        step, total = trainer.global_step, trainer.max_steps
        elapsed = time.time() - self.started
        budget = next((c for c in trainer.callbacks if isinstance(c, TimeBudget)), None)
        left = budget.seconds_left() if budget is not None else elapsed / max(step, 1) * max(total - step, 0)
        losses = {k.removeprefix("train/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        lines = [f"**step** {step} / {total}, {elapsed:.0f} s, about {max(left, 0):.0f} s left"
                 f"{' in the time budget' if budget is not None else ''}\n", f"mesh of step {self.meshed_step}\n"]
        if self.paused:
            lines.append("**paused**: press Resume training to go on\n")
        if self.render is not None:
            lines.append(f"render: {100 * self.render.done // len(self.render.rays)} % ({self.render.chunks[-1][0]} rays a chunk)\n")
        lines += [f"- {k}: {v:.4g}" for k, v in sorted(losses.items())]
        self.status.content = "\n".join(lines)
        self.shown_at = time.time()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.viewer is not None:
            self.viewer.close()
            self.viewer = None
