"""VolSDF: volume rendering of a signed distance field through a Laplace-CDF density
(Yariv, Gu, Kasten and Lipman, "Volume Rendering of Neural Implicit Surfaces", NeurIPS 2021).

The model is NeuS's (:class:`models.neus.NeuSModel`: fields, occupancy-grid sampling, packed
compositing) with another opacity of a sample; VolSDF's error-bounded sampler is not implemented,
the occupancy grid finds the surface instead.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.fields import ColorField, SDFField
from models.neus import NeuSModel
from models.samplers import OccupancyGrid


def laplace_density(sdf: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """VolSDF's density (eq. 2-3): sigma = Psi_beta(-sdf) / beta, Psi_beta the CDF of the zero-mean Laplace
    distribution of scale beta: 0.5 exp(-sdf / beta) outside (sdf >= 0), 1 - 0.5 exp(sdf / beta) inside. (S,) -> (S,)."""
    half_tail = 0.5 * torch.exp(-sdf.abs() / beta)
    return torch.where(sdf >= 0, half_tail, 1.0 - half_tail) / beta


def laplace_optical_depth(sdf: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Integral of :func:`laplace_density` over SDF values from +infinity down to ``sdf``: the optical depth met
    along a straight path on which the SDF falls at unit rate (head-on to a surface), 0.5 exp(-|sdf| / beta) +
    max(-sdf, 0) / beta. (P,) -> (P,)."""
    return 0.5 * torch.exp(-sdf.abs() / beta) + torch.relu(-sdf) / beta


class LaplaceBeta(nn.Module):
    """VolSDF's learnable Laplace scale beta = beta_min + exp(-10 v) (VolSDF's own is beta_min + |v|). ``v`` is
    stored as NeuS's :class:`models.fields.InverseVariance` stores its sharpness (s = exp(10 v)), so one learning
    rate moves beta and NeuS's 1/s at the same relative pace. ``init_value``: beta at the start (> beta_min > 0)."""

    def __init__(self, init_value: float = 0.1, beta_min: float = 1e-4) -> None:
        super().__init__()
        if not init_value > beta_min > 0:
            raise ValueError(f"need init_value > beta_min > 0, got init_value={init_value}, beta_min={beta_min}")
        self.beta_min = beta_min
        self.variance = nn.Parameter(torch.tensor(-math.log(init_value - beta_min) / 10.0))

    def forward(self) -> torch.Tensor:
        """beta, a scalar tensor."""
        return self.beta_min + torch.exp(-10.0 * self.variance)


class VolSDFModel(NeuSModel):
    """SDF + colour fields rendered with VolSDF's density along occupancy-grid samples.

    A sample of length dt at SDF value d has opacity 1 - exp(-sigma(d) dt), sigma the
    :func:`laplace_density` at its mid-point (VolSDF eq. 2-3 with the usual quadrature); compositing,
    outputs and grid updates are :class:`NeuSModel`'s. The ``beta`` module sits in NeuS's ``variance``
    slot (so the systems' ``variance`` parameter group trains it) and :meth:`inv_s` is 1/beta.
    """

    def __init__(self, geometry: SDFField, texture: ColorField, beta: LaplaceBeta, grid: OccupancyGrid,
                 samples_per_ray: int = 512, grid_update_every: int = 16, grid_warmup_steps: int = 256,
                 grid_update_fraction: float = 0.25) -> None:
        super().__init__(geometry, texture, beta, grid, samples_per_ray, grid_update_every, grid_warmup_steps,
                         grid_update_fraction)

    def beta(self) -> torch.Tensor:
        return self.variance()

    def inv_s(self) -> torch.Tensor:
        """1/beta (VolSDF's alpha: the density inside the object), the counterpart of NeuS's sharpness."""
        return 1.0 / self.beta()

    def alpha(self, sdf: torch.Tensor, grad: torch.Tensor, dirs: torch.Tensor, dt: torch.Tensor,
              cos_anneal_ratio: float = 1.0) -> torch.Tensor:
        """1 - exp(-sigma(sdf) dt) for samples (S,); gradients, directions and the annealing play no part. -> (S,)."""
        return -torch.expm1(-laplace_density(sdf, self.beta()) * dt)

    @torch.no_grad()
    def cell_occupancy(self, x: torch.Tensor) -> torch.Tensor:
        """Opacity of crossing one grid cell head-on (its diagonal) at distance |sdf(x)| from the surface. (P, 3) -> (P,).

        As with NeuS the distance is unsigned: the object's interior beyond the surface band is skipped, which
        changes nothing once the band is opaque (VolSDF's density inside is 1/beta)."""
        half = 0.5 * math.sqrt(3.0) * self.grid.cell_size
        sdf, beta = self.geometry.sdf(x).abs(), self.beta()
        depth = laplace_optical_depth(sdf - half, beta) - laplace_optical_depth(sdf + half, beta)
        return -torch.expm1(-depth)
