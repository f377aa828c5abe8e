"""Volume rendering of packed samples and the NeuS opacity of a signed distance field."""
from __future__ import annotations

import torch

from models.samplers import nerfacc_or_none


def neus_alpha(sdf: torch.Tensor, grad: torch.Tensor, dirs: torch.Tensor, dt: torch.Tensor,
               inv_s: torch.Tensor, cos_anneal_ratio: float = 1.0) -> torch.Tensor:
    """Discrete opacity of NeuS (Wang et al., NeurIPS 2021, eq. 13) for samples of length ``dt``.

    The SDF at the section ends is extrapolated from the mid-point value along the ray with the
    slope cos(view, normal); early in training the slope is annealed from a half-cosine towards the
    true one (``cos_anneal_ratio`` 0 -> 1). alpha = (Phi(prev) - Phi(next)) / Phi(prev), Phi the
    logistic CDF with sharpness ``inv_s``.

    Args:
        sdf: (S,); grad: (S, 3) SDF gradients; dirs: (S, 3) ray directions; dt: (S,).
    Returns:
        (S,) alpha in [0, 1].
    """
    cos = (dirs * grad).sum(-1)
    slope = -(torch.relu(-cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + torch.relu(-cos) * cos_anneal_ratio)
    prev_cdf = torch.sigmoid((sdf - slope * dt * 0.5) * inv_s)
    next_cdf = torch.sigmoid((sdf + slope * dt * 0.5) * inv_s)
    return ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0)


def packed_weights(alpha: torch.Tensor, ray_indices: torch.Tensor, n_rays: int | None = None) -> torch.Tensor:
    """Compositing weights alpha_i * prod_{j<i} (1 - alpha_j) of packed samples sorted by ray. (S,) -> (S,).

    On CUDA with nerfacc installed its ``render_weight_from_alpha`` scan computes them (``n_rays``
    spares it a device sync); elsewhere a cumulative sum of log-transmittance in float64.
    """
    if alpha.numel() == 0:
        return alpha
    nerfacc = nerfacc_or_none() if alpha.is_cuda else None
    if nerfacc is not None:
        return nerfacc.render_weight_from_alpha(alpha, ray_indices=ray_indices, n_rays=n_rays)[0]
    log_t = torch.log(torch.clamp(1.0 - alpha, min=1e-10)).double()
    inclusive = torch.cumsum(log_t, 0)
    exclusive = inclusive - log_t
    first = torch.searchsorted(ray_indices, ray_indices)  # index of each ray's first sample
    transmittance = torch.exp(exclusive - exclusive[first]).to(alpha.dtype)
    return alpha * transmittance


def accumulate(weights: torch.Tensor, values: torch.Tensor | None, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Per-ray sum of weights * values: (S,), (S, C) or None -> (n_rays, C) (or (n_rays,) for None).

    One ``index_add_``, which is also what nerfacc's ``accumulate_along_rays`` runs on CUDA.
    """
    if values is None:
        return torch.zeros(n_rays, device=weights.device, dtype=weights.dtype).index_add_(0, ray_indices, weights)
    weighted = weights[:, None] * values  # float32 weights times half-precision colours under mixed precision
    return torch.zeros(n_rays, values.shape[-1], device=weights.device, dtype=weighted.dtype).index_add_(0, ray_indices, weighted)
