"""A radiance field of the unbounded background outside the bounding sphere, in NeRF++'s inverted-sphere
parametrisation (Zhang et al. 2020, "NeRF++: Analyzing and Improving Neural Radiance Fields"), as
NeuS uses it for scenes without masks (Wang et al., NeurIPS 2021)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.geometry import RayBundle
from models.encoders import FrequencyEncoder
from models.encoders.spherical_harmonics import spherical_harmonics


def inverted_sphere(points: torch.Tensor) -> torch.Tensor:
    """NeRF++'s coordinates of points outside the unit sphere: (x/r, y/r, z/r, 1/r), r = |p| (clamped
    to >= 1, so points inside count as on the sphere). (P, 3) -> (P, 4), bounded for any distance."""
    r = points.norm(dim=-1, keepdim=True).clamp_min(1.0)
    return torch.cat([points / r, 1.0 / r], dim=-1)


def background_samples(rays: RayBundle, n_samples: int, stratified: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of every ray beyond the unit sphere, uniform in inverse radius s = 1/r.

    A ray starts where it leaves the unit sphere (r = 1), or, when it misses the sphere, at its point
    nearest the centre (at its origin if that lies behind it); from there r only grows, and s runs
    from 1/r_start down to 0 (infinity) in ``n_samples`` equal bins, one sample per bin (its middle,
    or uniform in it when ``stratified``).

    Returns:
        t: (R, K) distances along the rays, increasing; ds: (R,) the bin width in s of each ray.
    """
    o, d = rays.origins, rays.directions
    b = (o * d).sum(-1)
    perp2 = ((o * o).sum(-1) - b * b).clamp_min(0.0)  # squared distance of the ray's line to the centre
    t_start = torch.maximum(-b + torch.sqrt((1.0 - perp2).clamp_min(0.0)), torch.zeros_like(b))
    r_start = (o + t_start[:, None] * d).norm(dim=-1).clamp_min(1.0)
    ds = 1.0 / (r_start * n_samples)
    offset = torch.rand(len(rays), n_samples, device=o.device, dtype=o.dtype) if stratified else torch.full(
        (len(rays), n_samples), 0.5, device=o.device, dtype=o.dtype)
    s = (1.0 / r_start[:, None] - (torch.arange(n_samples, device=o.device, dtype=o.dtype) + offset) * ds[:, None])
    r = 1.0 / s.clamp_min(1e-6)
    t = -b[:, None] + torch.sqrt((r * r - perp2[:, None]).clamp_min(0.0))
    return torch.maximum(t, t_start[:, None]), ds


class BackgroundField(nn.Module):
    """Density and view-dependent colour of the background, composited along each ray to one colour.

    Points beyond the unit sphere are encoded as :func:`inverted_sphere` coordinates with a frequency
    encoding; an MLP gives density (softplus) and a feature, a second one colour (sigmoid) from the
    feature and the view direction (spherical harmonics). Densities are per unit of inverse radius,
    so opacity is alpha_k = 1 - exp(-sigma_k ds); the last sample stands for everything up to
    infinity and is opaque, so the compositing weights of a ray sum to 1.
    """

    def __init__(self, n_samples: int = 32, hidden_dim: int = 64, n_layers: int = 2, n_frequencies: int = 6,
                 sh_degree: int = 4) -> None:
        super().__init__()
        self.n_samples, self.sh_degree = n_samples, sh_degree
        self.encoder = FrequencyEncoder(n_frequencies, in_dim=4)
        dims = [self.encoder.out_dim] + [hidden_dim] * n_layers
        trunk: list[nn.Module] = []
        for i in range(n_layers):
            trunk += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        self.trunk = nn.Sequential(*trunk)
        self.density = nn.Linear(dims[-1], 1)
        # The colour MLP's first layer on [feature, SH(view)], split so that the view term is computed once per ray.
        self.color_feature = nn.Linear(dims[-1], hidden_dim)
        self.color_view = nn.Linear(sh_degree**2, hidden_dim, bias=False)
        self.color_out = nn.Linear(hidden_dim, 3)

    def forward(self, rays: RayBundle, stratified: bool = False) -> torch.Tensor:
        """Background colour of every ray, (R, 3) in [0, 1]."""
        n, k = len(rays), self.n_samples
        t, ds = background_samples(rays, k, stratified)
        points = rays.origins[:, None] + t[..., None] * rays.directions[:, None]  # (R, K, 3)
        h = self.trunk(self.encoder(inverted_sphere(points.reshape(-1, 3))))
        sigma = F.softplus(self.density(h)).reshape(n, k)
        view = self.color_view(spherical_harmonics(rays.directions, self.sh_degree))  # (R, hidden)
        hidden = F.relu(self.color_feature(h).reshape(n, k, -1) + view[:, None])
        rgb = torch.sigmoid(self.color_out(hidden))  # (R, K, 3)
        alpha = 1.0 - torch.exp(-sigma * ds[:, None])
        alpha = torch.cat([alpha[:, :-1], torch.ones_like(alpha[:, -1:])], dim=1)
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
        return ((alpha * transmittance)[..., None] * rgb).sum(1)
