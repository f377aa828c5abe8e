"""NeuS system: volume rendering of an SDF trained with colour, eikonal and mask losses."""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from core.geometry import RayBundle
from models.neus import NeuSModel
from systems.base import BaseSystem, curvature_loss, log_scalars, opacity_mask_loss
from systems.config import NeuSConfig, NeuSLoss, Rays, VisualHull, as_section

log = logging.getLogger(__name__)
# Evaluation renders (held-out views, validation, videos, the viewer) stop marching a ray once less than this
# much light gets through: far below one 8-bit grey level, and most samples behind a surface are never evaluated.
EVAL_STOP_TRANSMITTANCE = 1e-4


class NeuSSystem(BaseSystem):
    """Trains a :class:`NeuSModel`.

    Losses (each weight a constant or a schedule, see ``systems.schedules``): ``rgb_l1``, ``rgb_mse``, ``eikonal`` (on ray
    samples and ``eikonal_points`` uniform points in the bounding cube), ``mask`` (BCE of the
    opacity, used when the scene trains with masks), ``curvature`` (:func:`systems.base.curvature_loss` on the ray samples).
    Without masks there is no mask loss and no visual hull, and the background is a field outside
    the bounding sphere (``background=nerf``, :class:`models.background.BackgroundField`).

    The number of rays per step adapts so that the samples per step stay near
    ``rays.target_samples`` (instant-nsr-pl's dynamic batch size).
    """

    model: NeuSModel

    def __init__(self, model: NeuSModel, *args: Any, loss: NeuSLoss | dict | None = None, rays: Rays | dict | None = None,
                 cos_anneal_steps: int = NeuSConfig.cos_anneal_steps, visual_hull: VisualHull | dict | None = None, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.loss_cfg = as_section(NeuSLoss, loss)
        self.rays_cfg = as_section(Rays, rays)
        self.hull_cfg = as_section(VisualHull, visual_hull)
        self.hull_time_s: float | None = None  # seconds the visual hull took (on_fit_start), None when not carved
        self.cos_anneal_steps = cos_anneal_steps
        self.update_step(0, 0)
        self.n_rays = float(self.rays_cfg.initial)

    def param_groups(self) -> list[dict[str, Any]]:
        variance = {"name": "variance", "params": list(self.model.variance.parameters()), "lr": self.optim.group_lr("variance")}
        return [*super().param_groups(), variance]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Trainable cameras start off their true poses: their hull is carved from the starting poses with
        # the masks dilated by a further ``trainable_margin_deg`` of view angle (None: no hull).
        margin = self.hull_cfg.trainable_margin_deg if self.trainable_cameras else 0.0
        masks = self.scene.train_masks
        if self.hull_cfg.enabled and margin is not None and masks is not None and self.global_step == 0:
            ids = self.train_ids
            with torch.no_grad():
                intrinsics, c2w = self.cameras(ids)
            dilation = self.hull_cfg.dilation + math.ceil(float(intrinsics[:, 0, 0].max()) * math.tan(math.radians(margin)))
            started = time.time()
            self.model.grid.carve_visual_hull(intrinsics, c2w, masks[ids], dilation, self.hull_cfg.tolerance)
            self.hull_time_s = round(time.time() - started, 2)  # reported apart from the training time
            log.info("visual hull carved from %d views in %.2f s", len(ids), self.hull_time_s)

    def update_step(self, epoch: int, step: int) -> None:
        """NeuS's cosine annealing at ``step``: 0 -> 1 over ``cos_anneal_steps`` training steps."""
        self.anneal = 1.0 if self.cos_anneal_steps <= 0 else min(1.0, step / self.cos_anneal_steps)

    def cos_anneal_ratio(self) -> float:
        """The annealing ratio of the current training step; 1 when not training (a loaded run's step
        counter restarts at 0, but its field was trained to the end of the ramp)."""
        return self.anneal if self.training else 1.0

    def render_rays(self, rays: RayBundle, background: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.render(rays, background, self.cos_anneal_ratio(), stratified=False, create_graph=False,
                                 stop_transmittance=EVAL_STOP_TRANSMITTANCE)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        step = self.schedule_step
        n = int(self.n_rays)
        rays, target, mask, bg = self.sample_rays(n)
        w = self.loss_cfg.weights(step)
        out = self.model.render(rays, bg, self.cos_anneal_ratio(), stratified=True, create_graph=True,
                                laplacian=w["curvature"] > 0)
        losses = {}
        if w["rgb_l1"] > 0:
            losses["rgb_l1"] = F.l1_loss(out["rgb"], target)
        if w["rgb_mse"] > 0:
            losses["rgb_mse"] = F.mse_loss(out["rgb"], target)
        if w["eikonal"] > 0:
            losses["eikonal"] = self.eikonal_loss(out["sample_grad"], self.loss_cfg.eikonal_points)
        if mask is not None and w["mask"] > 0:
            losses["mask"] = opacity_mask_loss(out["opacity"], mask)
        if w["curvature"] > 0:
            losses["curvature"] = curvature_loss(out["sample_laplacian"])
        total = sum(w[k] * v for k, v in losses.items())

        samples = out["n_samples"].float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # DDP: one ray count for all processes
            torch.distributed.all_reduce(samples)
            samples /= torch.distributed.get_world_size()
        n_samples = float(samples)
        wanted = n * self.rays_cfg.target_samples / max(n_samples, 1.0)
        self.n_rays = min(max(0.9 * self.n_rays + 0.1 * wanted, self.rays_cfg.min), self.rays_cfg.max)
        with torch.no_grad():
            train_psnr = -10.0 * torch.log10(F.mse_loss(out["rgb"], target))
        log_scalars(self, {**losses, "loss": total, "psnr": train_psnr, "inv_s": self.model.inv_s(),
                           "rays": float(n), "samples": float(n_samples)}, prog_bar=("loss", "psnr"))
        return total

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["n_rays"] = self.n_rays

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.n_rays = float(checkpoint.get("n_rays", self.n_rays))

