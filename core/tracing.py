"""Plain sphere tracing of an SDF (Hart, "Sphere tracing: a geometric method for the antialiased ray tracing of
implicit surfaces", The Visual Computer 1996) and SDF gradients and normals. Pure torch: an SDF is any function
mapping points (P, 3) to signed distances (P,). IDR's bidirectional tracer for training is models.ray_tracing."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from core.geometry import intersect_sphere

SdfFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps points (P, 3) to signed distances (P,)."""


def sphere_trace(sdf: SdfFn, origins: torch.Tensor, dirs: torch.Tensor, radius: float, hit_eps: float,
                 graze_eps: float, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """March (R, 3) rays from their entry into the sphere of ``radius`` at the origin by steps of the SDF (a
    distance lower bound) until it is below ``hit_eps`` or the ray leaves the sphere, at most ``max_steps``
    steps; returns hit distances (R,) and hit flags (R,). Rays still marching after the step budget graze the
    silhouette; they count as hits when their last SDF value is below ``graze_eps``."""
    t, far, active = intersect_sphere(origins, dirs, radius)
    dist = torch.full_like(t, math.inf)
    for _ in range(max_steps):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        step = sdf(origins[idx] + t[idx, None] * dirs[idx])
        t[idx] += step
        dist[idx] = step
        active[idx[(step < hit_eps) | (t[idx] > far[idx])]] = False
    return t, (dist < graze_eps) & (t <= far)


def sdf_gradient(sdf: SdfFn, points: torch.Tensor) -> torch.Tensor:
    """SDF gradients (P, 3) at points (P, 3) by autograd (also under ``torch.no_grad``); not normalised."""
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(sdf(x).sum(), x)
    return grad


def sdf_normals(sdf: SdfFn, points: torch.Tensor, h: float | None = None) -> torch.Tensor:
    """Unit SDF gradients (P, 3) at points (P, 3): by autograd, or by central differences of step ``h``."""
    if h is None:
        grad = sdf_gradient(sdf, points)
    else:
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * h
        grad = torch.stack([sdf(points + o) - sdf(points - o) for o in offsets], dim=-1)
    return F.normalize(grad, dim=-1)
