"""What every reconstruction system shares: data on the device, ray sampling, optimisation,
held-out rendering and metrics, mesh export. Subclasses implement ``training_step`` and
``render_rays``; their ``model`` has a ``geometry`` (SDF field) and a ``texture`` (colour field).
The system and its submodules expose ``update_step(epoch, step)`` hooks, walked before every training
step by :class:`systems.callbacks.StepSchedules`."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import imageio.v3 as iio
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from core.errors import InputError
from core.geometry import RayBundle, image_rays, pixel_rays
from datasets.scene import Scene
from models.background import BackgroundField
from models.cameras import Similarity, TrainableCameras, pose_errors
from models.interfaces import CameraRig
from models.mesh import decimate, extract_mesh, largest_component
from models.metrics import psnr, sample_surface, silhouette_iou
from models.motion import MovingObjectCameras, RigidMotion
from models.neus import NeuSModel
from models.texture import bake_texture
from systems.callbacks import StepSchedules
from systems.config import BackgroundFieldConfig, Optim, Optimizer, Scheduler, SystemConfig, as_section
from systems.mesh_io import point_cloud_path, save_cameras, save_mesh, save_point_cloud, save_textured_mesh
from systems.schedules import ScheduleClock
from systems.trust import build

BACKGROUNDS = ("black", "white", "random", "learned", "nerf")
CONSTANT_BACKGROUNDS = ("black", "white", "random")  # replaced by the background field when training without masks
log = logging.getLogger(__name__)


class _Steps(IterableDataset):
    """An endless stream of step tokens: rays are sampled on the device inside the step."""

    def __iter__(self):
        while True:
            yield 0


class BaseSystem(pl.LightningModule):
    optim_schema: type[Optim] = Optim  # the optimiser section's dataclass (its defaults are the system's)
    optimizer_schema: type[Optimizer] = Optimizer  # the default optimiser (system.optimizer)

    def __init__(
        self,
        model: nn.Module,
        cameras: CameraRig,
        scene: Scene,
        name: str,
        background: str,
        background_field: BackgroundFieldConfig | dict | None = None,
        optim: Optim | dict | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | Optimizer | dict | None = None,
        scheduler: Callable[..., Any] | Scheduler | dict | None = None,
        render_chunk: int = SystemConfig.render_chunk,
        eval_downscale: int = SystemConfig.eval_downscale,
        run_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.model, self.cameras, self.scene = model, cameras, scene
        background = self.resolve_background(background)
        self.name, self.background_mode = name, background
        self.optim = as_section(self.optim_schema, optim)
        # Partials (Hydra's _partial_ nodes): optimizer(param groups), scheduler(optimizer, optim, max_steps).
        self.make_optimizer = optimizer if callable(optimizer) else build(optimizer or self.optimizer_schema(), _convert_="object")
        self.make_scheduler = scheduler if callable(scheduler) else build(scheduler or Scheduler(), _convert_="object")
        self.render_chunk, self.eval_downscale = render_chunk, eval_downscale
        self.run_dir = Path(run_dir) if run_dir else None
        self.learned_background = nn.Parameter(torch.zeros(3)) if background == "learned" else None
        field_cfg = as_section(BackgroundFieldConfig, background_field)  # its values checked by the section
        self.background_field = BackgroundField(**dataclasses.asdict(field_cfg)) if background == "nerf" else None
        self.test_metrics: list[dict[str, float]] = []  # per held-out view, after the test epoch (rank 0)
        self.test_renders: dict[str, dict[str, np.ndarray]] = {}  # {view label: {rgb, normal, depth}} after the test epoch (rank 0)
        self.test_outputs: list[tuple[int, dict[str, float], dict[str, np.ndarray]]] = []  # (view, metrics, images) of this rank
        self.register_buffer("train_ids", torch.tensor(scene.train_ids), persistent=False)
        self.step_offset = 0  # steps trained before this fit (earlier frames of a sequence): schedules see them too
        self.clock = ScheduleClock()  # stretches the schedules to a time-budgeted run (systems.callbacks.TimeBudget)

    def schedule_step_of(self, step: int) -> int:
        """The step that schedules (loss weights, learning rates, ``update_step`` hooks) see at training step
        ``step``: :attr:`clock`'s reading plus ``step_offset``. The one source of the schedule step."""
        return self.clock(step) + self.step_offset

    @property
    def schedule_step(self) -> int:
        """:meth:`schedule_step_of` the trainer's current step."""
        return self.schedule_step_of(self.global_step)

    # ----------------------------------------------------------------- data
    def _scene_to_device(self) -> None:
        if self.scene.images.device != self.device:
            self.scene.to(self.device)

    def on_fit_start(self) -> None:
        self._scene_to_device()
        if self.global_rank > 0:  # DDP: each process draws its own rays (rank 0 keeps a single process's stream)
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_test_start(self) -> None:
        self._scene_to_device()

    def on_validation_start(self) -> None:
        self._scene_to_device()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.scene.test_ids[:1] or [0], batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.scene.test_ids, batch_size=None)

    def resolve_background(self, background: str) -> str:
        """The background mode to run with: ``background`` checked, and a constant colour replaced by
        the background field (``nerf``, with one log line) when the scene trains without masks."""
        if background not in BACKGROUNDS:
            raise InputError("system.background", f"unknown value {background!r}; choose one of {', '.join(BACKGROUNDS)}")
        if self.scene.train_masks is None and background in CONSTANT_BACKGROUNDS:
            log.info("the scene trains without masks: system.background=%s -> nerf (a background field outside the bounding sphere)",
                     background)
            return "nerf"
        return background

    def background(self, rays: RayBundle) -> torch.Tensor:
        """Background colour of rays, (R, 3) or (3,): a constant, or the background field's (R, 3)."""
        if self.background_field is not None:
            return self.background_field(rays, stratified=self.training)
        if self.background_mode == "random" and self.training:
            return torch.rand(len(rays), 3, device=self.device)
        if self.background_mode == "learned":
            return torch.sigmoid(self.learned_background)
        value = 1.0 if self.background_mode == "white" else 0.0
        return torch.full((3,), value, device=self.device)

    def sample_rays(self, n: int) -> tuple[RayBundle, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """n random training pixels: rays, target colour (n, 3), mask (n,) or None (training without
        masks), background (n, 3) or (3,). With masks and a constant background the target is the
        image composited over it; with the background field it is the image as it is."""
        h, w = self.scene.hw
        views = self.train_ids[torch.randint(len(self.train_ids), (n,), device=self.device)]
        px = torch.randint(w, (n,), device=self.device)
        py = torch.randint(h, (n,), device=self.device)
        intrinsics, c2w = self.cameras(views)
        rays = pixel_rays(intrinsics, c2w, px.float() + 0.5, py.float() + 0.5)
        rgb = self.scene.images[views, py, px]
        masks = self.scene.train_masks
        mask = None if masks is None else masks[views, py, px]
        bg = self.background(rays)
        if mask is not None and self.background_field is None:
            rgb = rgb * mask[:, None] + bg * (1.0 - mask[:, None])
        return rays, rgb, mask, bg

    # ----------------------------------------------------------- optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """Adam groups with their own learning rates: encoder, geometry MLP, texture, camera (trainable
        poses, ``lr_camera``), everything else (learned background) as ``other``, with
        ``background=nerf`` the background field (``lr_background``), and for a sequence the object's
        rigid motion (``motion``, ``lr_motion``). Subclasses add their own."""
        o = self.optim
        geometry = self.model.geometry
        encoder_ids = {id(p) for p in geometry.encoder.parameters()}
        motion = self.object_motion
        motion_ids = {id(p) for p in motion.parameters()} if motion is not None else set()
        own = ("model.", "cameras.", "background_field.")
        groups = [
            {"name": "encoder", "params": list(geometry.encoder.parameters()), "lr": o.group_lr("encoder")},
            {"name": "geometry", "params": [p for p in geometry.parameters() if id(p) not in encoder_ids], "lr": o.group_lr("geometry")},
            {"name": "texture", "params": list(self.model.texture.parameters()), "lr": o.group_lr("texture")},
            {"name": "camera", "params": [p for p in self.cameras.parameters() if id(p) not in motion_ids], "lr": o.lr_camera},
            {"name": "other", "params": [p for n, p in self.named_parameters() if not n.startswith(own)], "lr": o.lr},
        ]
        if self.background_field is not None:
            groups.append({"name": "background", "params": list(self.background_field.parameters()), "lr": o.group_lr("background")})
        if motion is not None:
            groups.append({"name": "motion", "params": list(motion.parameters()), "lr": o.lr_motion})
        return groups

    def eikonal_loss(self, sample_grad: torch.Tensor, n_uniform: int) -> torch.Tensor:
        """Mean (|grad f| - 1)^2 over the given SDF gradients (S, 3) and ``n_uniform`` random points in the bounding cube."""
        pts = torch.rand(n_uniform, 3, device=self.device) * 2 - 1
        _, _, grad_uniform = self.model.geometry.forward_with_gradient(pts, create_graph=True)
        grads = torch.cat([sample_grad, grad_uniform])
        return ((grads.norm(dim=-1) - 1.0) ** 2).mean()

    def configure_optimizers(self) -> dict[str, Any]:
        """``system.optimizer`` on the trainable parameters of :meth:`param_groups` (groups left empty are
        dropped), ``system.scheduler`` stepped every step."""
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in self.param_groups()]
        optimizer = self.make_optimizer([g for g in groups if g["params"]])
        scheduler = self.make_scheduler(optimizer, self.optim, self.clock.reference_steps or self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        """Step the learning-rate schedule to the schedule step of the next training step (:attr:`clock`:
        the training step itself unless a time budget stretches the run), so it scales with the run as
        every other schedule does. Schedulers whose rate is a function of ``last_epoch`` (``LambdaLR``,
        the default's) follow it exactly."""
        scheduler.last_epoch = self.clock(self.global_step) - 1
        scheduler.step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["schedule_clock"] = dataclasses.asdict(self.clock)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "schedule_clock" in checkpoint:
            self.clock = ScheduleClock(**checkpoint["schedule_clock"])

    def configure_callbacks(self) -> list[pl.Callback]:
        """:class:`StepSchedules` walks the ``update_step`` hooks before every training step (attached once:
        a trainer that fitted and now tests has it already)."""
        attached = self._trainer is not None and any(isinstance(c, StepSchedules) for c in self.trainer.callbacks)
        return [] if attached else [StepSchedules()]

    # ------------------------------------------------------------- rendering
    def render_rays(self, rays: RayBundle, background: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation rendering of rays: rgb (R, 3), opacity (R,), depth (R,), normal (R, 3)."""
        raise NotImplementedError

    def render_chunked(self, rays: RayBundle) -> dict[str, torch.Tensor]:
        """Evaluation rendering of many rays in chunks of ``render_chunk``: rgb (R, 3), opacity (R,), depth (R,),
        normal (R, 3), detached. Only these four per-ray outputs of a chunk are kept (its samples, their
        autograd graph from the SDF normals, and any other output are freed before the next chunk), so the
        peak memory does not grow with the ray count."""
        kept: dict[str, list[torch.Tensor]] = {key: [] for key in ("rgb", "opacity", "depth", "normal")}
        for o, d in zip(rays.origins.split(self.render_chunk), rays.directions.split(self.render_chunk)):
            chunk = RayBundle(o, d)
            out = self.render_rays(chunk, self.background(chunk))
            for key, values in kept.items():
                values.append(out[key].detach())
            del out
        return {key: torch.cat(values) for key, values in kept.items()}

    def render_image(self, intrinsics: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> dict[str, torch.Tensor]:
        """Render a camera, intrinsics (3, 3) and c2w (4, 4), in chunks (:meth:`render_chunked`):
        rgb, normal (H, W, 3), opacity, depth (H, W), detached."""
        out = self.render_chunked(image_rays(intrinsics, c2w, height, width))
        return {key: v.reshape(height, width, -1).squeeze(-1) for key, v in out.items()}

    def render_view(self, view: int) -> dict[str, torch.Tensor]:
        """Render held-out view ``view`` at 1/eval_downscale resolution: rgb, normal (H, W, 3), opacity, depth (H, W)."""
        h, w = self.scene.hw
        s = self.eval_downscale
        intrinsics, c2w = self.view_cameras(torch.tensor([view], device=self.device))
        k = intrinsics[0].clone()
        k[:2] /= s
        return self.render_image(k, c2w[0], h // s, w // s)

    @property
    def object_motion(self) -> RigidMotion | None:
        """A sequence frame's rigid object motion (its cameras' ``motion``), or None."""
        return self.cameras.motion if isinstance(self.cameras, MovingObjectCameras) else None

    @property
    def trainable_cameras(self) -> bool:
        """Whether the poses are optimised (:class:`TrainableCameras`, with reference poses to align to)."""
        return isinstance(self.cameras, TrainableCameras)

    def frame_alignment(self) -> Similarity | None:
        """With trainable cameras, the similarity from the learned frame to the reference frame
        (fitted on the training views' centres); None with fixed cameras."""
        return self.cameras.alignment(self.train_ids) if self.trainable_cameras else None

    def view_cameras(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Intrinsics (B, 3, 3) and c2w (B, 4, 4) to render views (B,) from. With trainable cameras
        these are the reference poses mapped into the learned frame, so held-out views (whose poses
        were never trained) are rendered where they really are."""
        sim = self.frame_alignment()
        intrinsics, c2w = self.cameras(view_ids)
        if sim is None:
            return intrinsics, c2w
        return intrinsics, sim.inverse().poses(self.cameras.reference_c2w[view_ids])

    def pose_metrics(self) -> dict[str, float]:
        """Training-view pose errors after alignment (and those of the starting poses); empty with fixed cameras."""
        if not self.trainable_cameras:
            return {}
        ids = self.train_ids
        start = pose_errors(self.cameras.init_c2w[ids], self.cameras.reference_c2w[ids])
        return {**self.cameras.errors(ids), **{f"{k}_init": v for k, v in start.items()}}

    def view_targets(self, view: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ground-truth image (H', W', 3) and mask (H', W') of a view at the evaluation resolution."""
        s = self.eval_downscale
        img = self.scene.images[view]
        mask = self.scene.masks[view] if self.scene.masks is not None else None
        if s > 1:
            img = F.avg_pool2d(img.permute(2, 0, 1)[None], s)[0].permute(1, 2, 0)
            mask = None if mask is None else F.avg_pool2d(mask[None, None], s)[0, 0]
        return img, mask

    def evaluate_view(self, view: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Render a held-out view; masked PSNR and silhouette IoU against its image and mask."""
        with torch.no_grad():
            out = self.render_view(view)
        img, mask = self.view_targets(view)
        metrics = {"psnr": psnr(out["rgb"], img, mask > 0.5 if mask is not None else None)}
        if mask is not None:
            metrics["iou"] = silhouette_iou(out["opacity"], mask > 0.5)
        return metrics, out

    def validation_step(self, view: int, batch_idx: int) -> None:
        metrics, out = self.evaluate_view(int(view))
        for key, value in {**metrics, **self.pose_metrics()}.items():
            self.log(f"val/{key}", value, batch_size=1, sync_dist=True)
        if self.logger is not None and hasattr(self.logger.experiment, "add_image"):
            for key, image in visualise(out).items():
                self.logger.experiment.add_image(f"val/{key}", image, self.global_step, dataformats="HWC" if image.ndim == 3 else "HW")

    def test_step(self, view: int, batch_idx: int) -> None:
        view = int(view)
        metrics, out = self.evaluate_view(view)
        metrics = {k: float(v) for k, v in metrics.items()}
        log.info("held-out view %s (%d/%d): %s", self.scene.view_label(view), batch_idx + 1, len(self.scene.test_ids),
                 ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        self.test_outputs.append((view, metrics, visualise(out)))

    def on_test_epoch_start(self) -> None:
        self.test_metrics, self.test_outputs = [], []

    def on_test_epoch_end(self) -> None:
        """Collect the held-out views on rank 0 (DDP splits them across processes and repeats some to
        even the split), each once and in order: their metrics in ``test_metrics``, their renders in
        ``test_renders`` and written to ``renders/``. Other ranks keep none."""
        outputs = self.test_outputs
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size if self.trainer.is_global_zero else None
            torch.distributed.gather_object(outputs, gathered, dst=0)
            outputs = [o for rank in gathered or [] for o in rank]
        views = {view: (metrics, images) for view, metrics, images in sorted(outputs, key=lambda o: o[0])}
        self.test_metrics = [metrics for metrics, _ in views.values()]
        self.test_renders = {self.scene.view_label(view): images for view, (_, images) in views.items()}
        if self.run_dir is not None and views:
            render_dir = self.run_dir / "renders"
            render_dir.mkdir(parents=True, exist_ok=True)
            for view, (_, images) in views.items():
                for key, image in images.items():
                    iio.imwrite(render_dir / f"{self.scene.view_label(view)}_{key}.png", image)
        self.test_outputs = []

    # ----------------------------------------------------------------- meshes
    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """SDF in the normalised frame, (P, 3) -> (P,), from ``model.geometry``."""
        return self.model.geometry.sdf(x)

    def vertex_colors(self, vertices: torch.Tensor) -> torch.Tensor:
        """Colours (V, 3) in [0, 1] of vertices (V, 3) seen head-on (view direction = -normal)."""
        return self.normals_and_colors(vertices)[1]

    def normals_and_colors(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit SDF-gradient normals (P, 3) of points (P, 3) and their colours (P, 3) in [0, 1] seen head-on
        (view direction = -normal), detached."""
        _, feature, grad = self.model.geometry.forward_with_gradient(points, create_graph=False)
        normals = F.normalize(grad.detach(), dim=-1)
        with torch.no_grad():
            return normals, self.model.texture(points, normals, -normals, feature)

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """Normalised (P, 3) -> the dataset's original world frame (through scale_mat). With trainable
        cameras the points are first aligned from the learned frame to the reference one, so meshes
        compare with those of fixed-camera runs; a sequence frame's are first moved by the object's motion."""
        motion = self.object_motion
        if motion is not None:
            with torch.no_grad():
                points = motion.to_world(torch.from_numpy(points)).numpy()
        sim = self.frame_alignment()
        if sim is not None:
            points = sim.points(torch.from_numpy(points).to(sim.rotation)).double().cpu().numpy()
        m = self.scene.scale_mat
        return points @ m[:3, :3].T + m[:3, 3]

    def export_cameras(self, path: str | Path) -> None:
        """Write the learned cameras of all views, aligned to the reference frame, in the NeuS/IDR
        input layout (``world_mat_i`` projecting world points, ``scale_mat_i`` the scene's)."""
        ids = torch.arange(self.scene.n_views, device=self.device)
        with torch.no_grad():
            intrinsics, c2w = self.cameras(ids)
            sim = self.frame_alignment()
            if sim is not None:
                c2w = sim.poses(c2w)
        save_cameras(path, intrinsics.double().cpu().numpy(), c2w.double().cpu().numpy(), self.scene.scale_mat)

    def empty_space(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """(P, 3) -> (P,) bool: points in the space the renderer skips as empty, the exterior of the
        model's occupancy grid (:meth:`OccupancyGrid.exterior`); None without a grid (IDR)."""
        if not isinstance(self.model, NeuSModel):
            return None
        grid = self.model.grid
        exterior = grid.exterior()
        return lambda x: grid.lookup(x, exterior)

    def surface(self, resolution: int, keep_largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The zero level set on a ``resolution``^3 grid in the normalised frame: vertices (V, 3), faces (F, 3)
        (only the surface the renderer sees, see :meth:`export_mesh`; its largest component when ``keep_largest``)."""
        vertices, faces = extract_mesh(self.sdf, resolution, device=self.device, chunk=self.render_chunk * 16,
                                       outside=self.empty_space())
        if keep_largest and len(faces):
            vertices, faces = largest_component(vertices, faces)
        return vertices, faces

    def point_colors(self, points: np.ndarray) -> np.ndarray:
        """:meth:`vertex_colors` of normalised points (P, 3), in chunks, as an array (P, 3) in [0, 1]."""
        p = torch.from_numpy(points).float().to(self.device)
        return torch.cat([self.vertex_colors(c) for c in p.split(self.render_chunk * 4)]).cpu().numpy()

    def surface_points(self, vertices: np.ndarray, faces: np.ndarray, n: int, max_step: float) -> tuple[np.ndarray, ...]:
        """``n`` points on the zero level set, with unit normals and colours, all (n, 3), normalised frame:
        area-weighted samples of the mesh (V, 3), (F, 3) (seed 0), each moved one Newton step along the SDF
        gradient, ``x - f(x) grad / |grad|^2`` (at most ``max_step`` far), from the mesh's chords onto the
        surface; normals are the SDF gradients there and colours as :meth:`vertex_colors`. An empty mesh gives none."""
        if n == 0 or len(faces) == 0:
            return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3))
        samples = torch.from_numpy(sample_surface(vertices, faces, n)[0]).float().to(self.device)
        points, normals, colors = [], [], []
        for chunk in samples.split(self.render_chunk * 4):
            with torch.no_grad():
                sdf, _, grad = self.model.geometry.forward_with_gradient(chunk, create_graph=False)
                length = grad.norm(dim=-1).clamp_min(1e-8)
                chunk = chunk - ((sdf / length).clamp(-max_step, max_step) / length)[:, None] * grad
            normal, color = self.normals_and_colors(chunk)
            points.append(chunk.cpu())
            normals.append(normal.cpu())
            colors.append(color.cpu())
        return tuple(torch.cat(values).double().numpy() for values in (points, normals, colors))

    def export_mesh(self, path: str | Path, resolution: int, keep_largest: bool = True, colors: bool = True,
                    target_faces: int | None = None, texture_size: int | None = None, points: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Extract the zero level set and write it (world frame) to ``path``; returns world (vertices, faces).

        Only the surface the renderer sees is extracted: the SDF counts as positive in its empty
        space (:meth:`empty_space`), where rays take no samples and nothing constrains its sign
        (sine-based encoders such as NFFB readily cross zero there). ``target_faces`` decimates the
        mesh before it is coloured; ``texture_size`` also writes it UV-textured (``<stem>_textured``
        .obj/.mtl/.png/.glb, colours baked from the colour network into a texture that many texels square); ``points``
        also writes that many :meth:`surface_points` of the full mesh, world frame, to ``<stem>_points.ply``."""
        vertices, faces = self.surface(resolution, keep_largest)
        if points:
            xyz, normals, rgb = self.surface_points(vertices, faces, points, max_step=1.0 / resolution)  # half a cell of [-1, 1]^3
            world_xyz = self.to_world(xyz)
            # to_world is affine with a similarity for its linear part: the image of the direction is the normal
            world_normals = self.to_world(xyz + normals) - world_xyz
            world_normals /= np.maximum(np.linalg.norm(world_normals, axis=-1, keepdims=True), 1e-12)
            save_point_cloud(point_cloud_path(path), world_xyz, world_normals, rgb)
        if target_faces is not None:
            vertices, faces = decimate(vertices, faces, target_faces)
        rgb = self.point_colors(vertices) if colors and len(vertices) else None
        world = self.to_world(vertices.astype(np.float64)).astype(np.float32)
        save_mesh(path, world, faces, rgb)
        if texture_size and len(faces):
            textured = bake_texture(vertices, faces, self.point_colors, texture_size)
            path = Path(path)
            save_textured_mesh(path.with_name(f"{path.stem}_textured.obj"), self.to_world(textured.vertices).astype(np.float32),
                               textured.faces, textured.uv, textured.image)
        return world, faces


def visualise(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """uint8 images of a rendered view: rgb, normal (mapped from [-1, 1]) and depth (normalised over the object)."""
    rgb = (out["rgb"].clamp(0, 1) * 255).byte().cpu().numpy()
    normal = ((out["normal"] * 0.5 + 0.5).clamp(0, 1) * 255).byte().cpu().numpy()
    depth, opacity = out["depth"], out["opacity"]
    fg = opacity > 0.5
    if fg.any():
        d = depth / opacity.clamp_min(1e-6)
        lo, hi = d[fg].min(), d[fg].max()
        d = ((d - lo) / (hi - lo + 1e-8)).clamp(0, 1) * fg
    else:
        d = torch.zeros_like(depth)
    return {"rgb": rgb, "normal": normal, "depth": (d * 255).byte().cpu().numpy()}


def curvature_loss(laplacian: torch.Tensor) -> torch.Tensor:
    """Neuralangelo's curvature loss (Li et al., CVPR 2023): mean |Laplacian of the SDF| over the
    given points, (S,) -> (); 0 without points."""
    return laplacian.abs().mean() if laplacian.numel() else laplacian.sum()


def opacity_mask_loss(opacity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between rendered opacity (R,) and the masks (R,), the opacity clamped to
    [1e-3, 1 - 1e-3] so empty and solid pixels keep finite gradients; -> ()."""
    return F.binary_cross_entropy(opacity.clamp(1e-3, 1 - 1e-3), mask)


def log_scalars(module: pl.LightningModule, values: dict[str, float | torch.Tensor], prog_bar: tuple[str, ...] = ()) -> None:
    """Log training scalars under ``train/``."""
    for key, value in values.items():
        module.log(f"train/{key}", value, prog_bar=key in prog_bar, batch_size=1, sync_dist=True)

