"""NeuS: volume rendering of a signed distance field (Wang et al., NeurIPS 2021)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.geometry import RayBundle
from models.fields import ColorField, InverseVariance, SDFField
from models.renderers import accumulate, neus_alpha, packed_weights
from models.samplers import OccupancyGrid


class NeuSModel(nn.Module):
    """SDF + colour fields rendered with NeuS weights along occupancy-grid samples.

    ``render`` returns per-ray ``rgb`` (R, 3), ``opacity`` (R,), ``depth`` (R,), ``normal`` (R, 3)
    and, for the losses, the SDF gradients of every sample ``sample_grad`` (S, 3) (and their
    Laplacians ``sample_laplacian`` (S,) when asked). The grid may be either back end of
    :mod:`models.samplers`, or switched off (uniform samples in the bounding sphere).
    """

    def __init__(self, geometry: SDFField, texture: ColorField, variance: InverseVariance, grid: OccupancyGrid,
                 samples_per_ray: int = 512, grid_update_every: int = 16, grid_warmup_steps: int = 256,
                 grid_update_fraction: float = 0.25) -> None:
        super().__init__()
        self.geometry, self.texture, self.variance, self.grid = geometry, texture, variance, grid
        self.step_size = 2.0 * math.sqrt(3.0) * grid.radius / samples_per_ray
        self.grid_update_every, self.grid_warmup_steps = grid_update_every, grid_warmup_steps
        self.grid_update_fraction = grid_update_fraction
        self._grid_period: int | None = None  # the period of grid_update_every steps of the last call

    def inv_s(self) -> torch.Tensor:
        return self.variance().clamp(1e-6, 1e6)

    def alpha(self, sdf: torch.Tensor, grad: torch.Tensor, dirs: torch.Tensor, dt: torch.Tensor,
              cos_anneal_ratio: float = 1.0) -> torch.Tensor:
        """Opacity of each sample from its SDF (S,), gradient (S, 3), ray direction (S, 3) and length dt (S,):
        NeuS's :func:`models.renderers.neus_alpha`. -> (S,)."""
        return neus_alpha(sdf, grad, dirs, dt, self.inv_s(), cos_anneal_ratio)

    @torch.no_grad()
    def cell_occupancy(self, x: torch.Tensor) -> torch.Tensor:
        """Opacity of crossing one grid cell head-on at distance |sdf(x)| from the surface. (P, 3) -> (P,)."""
        half = 0.5 * math.sqrt(3.0) * self.grid.cell_size
        sdf = self.geometry.sdf(x).abs()
        prev_cdf = torch.sigmoid((sdf + half) * self.inv_s())
        next_cdf = torch.sigmoid((sdf - half) * self.inv_s())
        return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)

    def update_step(self, epoch: int, step: int) -> None:
        """Refresh the occupancy grid whenever ``step`` enters a new period of ``grid_update_every`` steps
        (a stretched schedule may repeat or skip steps): every cell during the warm-up, then a random
        ``grid_update_fraction`` of the cells plus the occupied ones."""
        period = step // self.grid_update_every
        # The first call (a fresh or resumed run) updates only on a period's first step, as a plain step counter would.
        due = step % self.grid_update_every == 0 if self._grid_period is None else period != self._grid_period
        self._grid_period = period
        if due:
            fraction = 1.0 if step < self.grid_warmup_steps else self.grid_update_fraction
            self.grid.update(self.cell_occupancy, fraction)

    def render(self, rays: RayBundle, background: torch.Tensor, cos_anneal_ratio: float = 1.0,
               stratified: bool = False, create_graph: bool = False, laplacian: bool = False) -> dict[str, torch.Tensor]:
        """Render rays. background: (R, 3) or (3,). ``laplacian`` adds the SDF Laplacian of every
        sample, ``sample_laplacian`` (S,) (curvature loss)."""
        n = len(rays)
        samples = self.grid.sample(rays, self.step_size, stratified=stratified)
        idx = samples.ray_indices
        pts = samples.points(rays)
        dirs = rays.directions[idx]
        sdf, feature, grad, lap = self.geometry.forward_with_derivatives(pts, create_graph, laplacian)
        normals = F.normalize(grad, dim=-1)
        alpha = self.alpha(sdf, grad, dirs, samples.t_ends - samples.t_starts, cos_anneal_ratio)
        weights = packed_weights(alpha, idx, n)
        colors = self.texture(pts, normals, dirs, feature)
        opacity = accumulate(weights, None, idx, n)
        rgb = accumulate(weights, colors, idx, n) + background * (1.0 - opacity[:, None])
        out = {
            "rgb": rgb,
            "opacity": opacity,
            "depth": accumulate(weights, samples.t_mids[:, None], idx, n)[:, 0],
            "normal": accumulate(weights, normals, idx, n),
            "sample_grad": grad,
            "n_samples": torch.tensor(len(samples), device=rgb.device),
        }
        if lap is not None:
            out["sample_laplacian"] = lap
        return out
