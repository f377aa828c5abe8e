"""NeuS: volume rendering of a signed distance field (Wang et al., NeurIPS 2021)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.geometry import RayBundle
from models.fields import ColorField, InverseVariance, SDFField
from models.renderers import accumulate, neus_alpha, packed_weights
from models.samplers import OccupancyGrid, RaySamples


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
               stratified: bool = False, create_graph: bool = False, laplacian: bool = False,
               stop_transmittance: float = 0.0) -> dict[str, torch.Tensor]:
        """Render rays. background: (R, 3) or (3,). ``laplacian`` adds the SDF Laplacian of every
        sample, ``sample_laplacian`` (S,) (curvature loss). ``stop_transmittance`` > 0 (rendering without
        gradients only) marches the rays in rounds and stops each where its transmittance falls below it
        (:meth:`render_marching`): no ``sample_grad`` then."""
        samples = self.grid.sample(rays, self.step_size, stratified=stratified)
        if stop_transmittance > 0.0:
            if create_graph or laplacian:
                raise ValueError("stop_transmittance is for rendering without gradients (create_graph=False, no laplacian)")
            return self.render_marching(rays, samples, background, cos_anneal_ratio, stop_transmittance)
        n, idx = len(rays), samples.ray_indices
        alpha, colors, normals, grad, lap = self.shade(rays, samples, cos_anneal_ratio, create_graph, laplacian)
        weights = packed_weights(alpha, idx, n)
        opacity = accumulate(weights, None, idx, n)
        out = {
            "rgb": accumulate(weights, colors, idx, n) + background * (1.0 - opacity[:, None]),
            "opacity": opacity,
            "depth": accumulate(weights, samples.t_mids[:, None], idx, n)[:, 0],
            "normal": accumulate(weights, normals, idx, n),
            "sample_grad": grad,
            "n_samples": torch.tensor(len(samples), device=opacity.device),
        }
        if lap is not None:
            out["sample_laplacian"] = lap
        return out

    def shade(self, rays: RayBundle, samples: RaySamples, cos_anneal_ratio: float, create_graph: bool = False,
              laplacian: bool = False) -> tuple[torch.Tensor, ...]:
        """The fields at packed ``samples`` (S of them): alpha (S,), colour (S, 3), unit normal (S, 3), SDF gradient
        (S, 3) and, with ``laplacian``, the SDF Laplacian (S,) (else None)."""
        idx = samples.ray_indices
        pts = samples.points(rays)
        dirs = rays.directions[idx]
        sdf, feature, grad, lap = self.geometry.forward_with_derivatives(pts, create_graph, laplacian)
        normals = F.normalize(grad, dim=-1)
        alpha = self.alpha(sdf, grad, dirs, samples.t_ends - samples.t_starts, cos_anneal_ratio)
        return alpha, self.texture(pts, normals, dirs, feature), normals, grad, lap

    def render_marching(self, rays: RayBundle, samples: RaySamples, background: torch.Tensor, cos_anneal_ratio: float,
                        stop_transmittance: float, samples_per_round: int = 16) -> dict[str, torch.Tensor]:
        """Composite ``samples`` front to back, ``samples_per_round`` of each ray at a time, and leave a ray out of
        later rounds once its transmittance is below ``stop_transmittance`` (early ray termination): the fields are
        evaluated only up to where a ray becomes opaque, and each output differs from the full sum by less than
        ``stop_transmittance`` times its largest value. Outputs as :meth:`render`, without ``sample_grad``."""
        n, idx = len(rays), samples.ray_indices
        rank = torch.arange(len(samples), device=idx.device) - torch.searchsorted(idx, idx)  # a sample's place on its ray
        transmittance = torch.ones(n, device=rays.origins.device)
        rgb = torch.zeros(n, 3, device=transmittance.device)
        normal, depth = torch.zeros_like(rgb), torch.zeros_like(transmittance)
        evaluated = 0
        for start in range(0, int(rank.max()) + 1 if len(samples) else 0, samples_per_round):
            keep = (rank >= start) & (rank < start + samples_per_round) & (transmittance[idx] >= stop_transmittance)
            if not bool(keep.any()):
                break
            part = RaySamples(idx[keep], samples.t_starts[keep], samples.t_ends[keep])
            alpha, colors, normals, _, _ = self.shade(rays, part, cos_anneal_ratio)
            weights = packed_weights(alpha.detach(), part.ray_indices, n) * transmittance[part.ray_indices]
            rgb += accumulate(weights, colors.detach(), part.ray_indices, n)
            normal += accumulate(weights, normals.detach(), part.ray_indices, n)
            depth += accumulate(weights, part.t_mids[:, None], part.ray_indices, n)[:, 0]
            transmittance = transmittance - accumulate(weights, None, part.ray_indices, n)
            evaluated += len(part)
        opacity = 1.0 - transmittance
        return {"rgb": rgb + background * transmittance[:, None], "opacity": opacity, "depth": depth, "normal": normal,
                "n_samples": torch.tensor(evaluated, device=opacity.device)}
