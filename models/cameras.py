"""Camera models: per-view intrinsics and camera-to-world poses as a module."""
from __future__ import annotations

import torch
from torch import nn


class FixedCameras(nn.Module):
    """Calibrated cameras taken as given. forward(view_ids (B,)) -> intrinsics (B, 3, 3), c2w (B, 4, 4)."""

    def __init__(self, intrinsics: torch.Tensor, c2w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("intrinsics", intrinsics.clone().float())
        self.register_buffer("c2w", c2w.clone().float())

    def forward(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.intrinsics[view_ids], self.c2w[view_ids]
