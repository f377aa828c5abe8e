"""Rigid object motion for dynamic scenes trained frame by frame.

NeuS2 (Wang et al., ICCV 2023, "NeuS2: Fast learning of neural implicit surfaces for multi-view
reconstruction") fits, before each new frame's field is trained, one global rigid transform of the
object from the previous frame, accumulates it over the frames and applies it to the rays, so the
field stays in one canonical frame and only has to learn the non-rigid rest. Here the transform is
applied to the cameras, which is the same thing: a ray of camera ``c2w`` in the world meets the
object where the ray of camera ``M^-1 c2w`` meets the canonical object, ``M`` the object-to-world motion.
"""
from __future__ import annotations

import torch
from torch import nn

from models.cameras import so3_exp


class RigidMotion(nn.Module):
    """Object-to-world rigid motion ``M = D(rotation, translation) @ base``: a fixed ``base`` (4, 4)
    (the motion accumulated over earlier frames) and a trainable residual ``D`` about the origin of
    the normalised frame (axis-angle ``rotation`` in radians, ``translation`` in normalised units),
    identity at the start."""

    def __init__(self, base: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("base", torch.eye(4) if base is None else base.detach().clone().float())
        self.rotation = nn.Parameter(torch.zeros(3))
        self.translation = nn.Parameter(torch.zeros(3))

    def matrix(self) -> torch.Tensor:
        """The object-to-world motion (4, 4)."""
        delta = torch.eye(4, device=self.base.device, dtype=self.base.dtype)
        delta = torch.cat([torch.cat([so3_exp(self.rotation[None])[0], self.translation[:, None]], 1), delta[3:]], 0)
        return delta @ self.base

    def inverse(self) -> torch.Tensor:
        """The world-to-object motion (4, 4)."""
        m = self.matrix()
        r_t = m[:3, :3].T
        return torch.cat([torch.cat([r_t, -r_t @ m[:3, 3:]], 1), m[3:]], 0)

    def to_world(self, points: torch.Tensor) -> torch.Tensor:
        """Canonical points (P, 3) -> world points (P, 3)."""
        m = self.matrix().to(points)
        return points @ m[:3, :3].T + m[:3, 3]


class MovingObjectCameras(nn.Module):
    """Cameras seen from the object's canonical frame: ``forward(view_ids)`` gives the intrinsics
    (B, 3, 3) of ``cameras`` and their poses (B, 4, 4) moved by the inverse object motion, so every
    ray a system draws is a ray through the canonical object. ``motion`` maps the canonical frame
    (meshes) back to the world."""

    def __init__(self, cameras: nn.Module, motion: RigidMotion) -> None:
        super().__init__()
        self.cameras, self.motion = cameras, motion

    def forward(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        intrinsics, c2w = self.cameras(view_ids)
        return intrinsics, self.motion.inverse().to(c2w) @ c2w
