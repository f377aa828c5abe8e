"""Camera geometry: a look-at pose, rays from pinhole cameras and their intersection with the bounding sphere."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def look_at(centre: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(4, 4) OpenCV camera-to-world at ``centre`` (3,) looking at the origin, ``up`` (3,) pointing up in the image."""
    forward = -F.normalize(centre, dim=0)
    right = F.normalize(torch.linalg.cross(forward, up), dim=0)
    c2w = torch.eye(4, device=centre.device, dtype=centre.dtype)
    c2w[:3, :3] = torch.stack([right, torch.linalg.cross(forward, right), forward], 1)
    c2w[:3, 3] = centre
    return c2w


@dataclass
class RayBundle:
    """A batch of rays. origins, directions: (R, 3), directions unit length."""

    origins: torch.Tensor
    directions: torch.Tensor

    def __len__(self) -> int:
        return int(self.origins.shape[0])


def pixel_rays(intrinsics: torch.Tensor, c2w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> RayBundle:
    """Rays through pixel coordinates (OpenCV convention, pixel centres at +0.5).

    Args:
        intrinsics: (R, 3, 3) or (3, 3).
        c2w: (R, 4, 4) or (4, 4) camera-to-world.
        x, y: (R,) pixel column / row coordinates (float, already offset to the sample point).
    """
    fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
    cx, cy, skew = intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 0, 1]
    yc = (y - cy) / fy
    xc = (x - cx - skew * yc) / fx
    d_cam = torch.stack([xc, yc, torch.ones_like(xc)], dim=-1)
    d = (c2w[..., :3, :3] @ d_cam.unsqueeze(-1)).squeeze(-1)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[..., :3, 3].expand_as(d)
    return RayBundle(o.contiguous(), d.contiguous())


def image_rays(intrinsics: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> RayBundle:
    """All (H*W) pixel-centre rays of one view, row-major. intrinsics (3, 3), c2w (4, 4)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=c2w.device, dtype=c2w.dtype),
        torch.arange(width, device=c2w.device, dtype=c2w.dtype),
        indexing="ij",
    )
    return pixel_rays(intrinsics, c2w, xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5)


def intersect_sphere(origins: torch.Tensor, directions: torch.Tensor, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry/exit distances of unit-direction rays with a sphere at the origin.

    Returns:
        near, far: (R,) distances (near clamped at 0 for rays starting inside).
        hit: (R,) bool, whether the ray meets the sphere in front of its origin.
    """
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = torch.sqrt(disc.clamp_min(0.0))
    near = (-b - root).clamp_min(0.0)
    far = -b + root
    hit = hit & (far > 0)
    return near, far, hit
