"""IDR system: surface rendering of an SDF trained with colour, mask and eikonal losses (Yariv et al.,
"Multiview Neural Surface Reconstruction by Disentangling Geometry and Appearance", NeurIPS 2020)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.errors import InputError
from core.geometry import RayBundle
from models.idr import IDRModel, mask_loss
from systems.base import BaseSystem, curvature_loss, log_scalars
from systems.config import IDRConfig, IDRLoss, IDROptim, IDROptimizer, as_section


class IDRSystem(BaseSystem):
    """Trains an :class:`IDRModel` on ``n_rays`` random pixels per step.

    Losses (as in IDR; each weight a constant or a schedule, see ``systems.schedules``):
    ``rgb`` (L1 on rays that hit the surface inside the mask, summed and divided by the number of
    rays), ``mask`` ((1/a) BCE-with-logits of -a s* on the other rays, s* their minimal SDF; the
    sharpness a starts at ``alpha_init`` and is multiplied by ``alpha_factor`` at each step of
    ``alpha_milestones``; only with scene masks) and ``eikonal`` (on the traced points and
    ``eikonal_points`` uniform points in the bounding cube) and ``curvature`` (Neuralangelo's, see
    :func:`systems.base.curvature_loss`, on the surface points of the rays that hit). IDR needs
    masks (a scene that trains without them is refused) and a constant background.
    """

    model: IDRModel

    optim_schema = IDROptim
    optimizer_schema = IDROptimizer

    def __init__(self, model: IDRModel, *args: Any, n_rays: int = IDRConfig.n_rays, loss: IDRLoss | dict | None = None, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.n_rays = int(n_rays)
        self.loss_cfg = as_section(IDRLoss, loss)
        self.update_step(0, 0)

    def resolve_background(self, background: str) -> str:
        """Refuse a scene that trains without masks and the background field; else as the base system."""
        if self.scene.train_masks is None:
            where, why = ("dataset.use_masks", "false") if self.scene.masks is not None else (self.scene.root, "the scene has no masks")
            raise InputError(where, f"{why}, but IDR needs masks (its mask loss keeps the surface on the object); "
                                    "use system=neus, which adds a background field")
        if background == "nerf":
            raise InputError("system.background", "nerf (a background field) is for NeuS; IDR renders surfaces over "
                                                  "a constant background: black, white, random or learned")
        return super().resolve_background(background)

    def alpha(self, step: int) -> float:
        """Sharpness of the mask loss's sigmoid at ``step``."""
        passed = sum(step >= m for m in self.loss_cfg.alpha_milestones)
        return self.loss_cfg.alpha_init * self.loss_cfg.alpha_factor ** passed

    def update_step(self, epoch: int, step: int) -> None:
        """The mask loss's sharpness for ``step`` (IDR's schedule)."""
        self.mask_sharpness = self.alpha(step)

    def render_rays(self, rays: RayBundle, background: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.render(rays, None, background, create_graph=False)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        step = self.schedule_step
        n = self.n_rays
        rays, target, mask, bg = self.sample_rays(n)
        in_mask = mask > 0.5 if mask is not None else None
        w = self.loss_cfg.weights(step)
        out = self.model.render(rays, in_mask, bg, create_graph=True, laplacian=w["curvature"] > 0)
        hit = out["hit"]
        losses = {"rgb": (out["rgb"][hit] - target[hit]).abs().sum() / n}
        if in_mask is not None and w["mask"] > 0:
            losses["mask"] = mask_loss(out["min_sdf"], hit, in_mask, self.mask_sharpness)
        if w["eikonal"] > 0:
            losses["eikonal"] = self.eikonal_loss(out["sample_grad"], self.loss_cfg.eikonal_points)
        if w["curvature"] > 0:
            losses["curvature"] = curvature_loss(out["sample_laplacian"][hit])
        total = sum(w[k] * v for k, v in losses.items())

        with torch.no_grad():
            train_psnr = -10.0 * torch.log10(F.mse_loss(out["rgb"][hit], target[hit])) if hit.any() else torch.zeros((), device=self.device)
        log_scalars(self, {**losses, "loss": total, "psnr": train_psnr, "hit": hit.float().mean(), "alpha": self.mask_sharpness},
                    prog_bar=("loss", "psnr"))
        return total
