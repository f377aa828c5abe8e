"""NeRF positional (Fourier) encoding with an optional BARF coarse-to-fine window."""
from __future__ import annotations

import math

import torch
from torch import nn


class FrequencyEncoder(nn.Module):
    """[x, sin(2^k pi x), cos(2^k pi x)] for k < n_frequencies; (N, D) -> (N, D + 2 D n_frequencies),
    D = ``in_dim`` (3: points).

    The coarse-to-fine window of BARF (Lin et al., ICCV 2021) weighs octave k by
    (1 - cos(pi * clamp(alpha - k, 0, 1))) / 2, alpha growing linearly from 0 to n_frequencies
    between ``window_start`` and ``window_end`` steps; ``window_end = 0`` disables it.
    """

    def __init__(self, n_frequencies: int = 6, window_start: int = 0, window_end: int = 0, in_dim: int = 3) -> None:
        super().__init__()
        self.n_frequencies, self.in_dim = n_frequencies, in_dim
        self.window_start, self.window_end = window_start, window_end
        self.out_dim = in_dim * (1 + 2 * n_frequencies)
        self.has_jacobian = True  # forward_with_jacobian (models.interfaces.JacobianEncoder)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32))
        self.register_buffer("window", torch.ones(n_frequencies))

    def update_step(self, epoch: int, step: int) -> None:
        """Advance the coarse-to-fine window to ``step``."""
        if self.window_end <= 0:
            return
        progress = (step - self.window_start) / max(self.window_end - self.window_start, 1)
        alpha = min(max(progress, 0.0), 1.0) * self.n_frequencies
        k = torch.arange(self.n_frequencies, device=self.window.device, dtype=self.window.dtype)
        self.window.copy_((1 - torch.cos(math.pi * (alpha - k).clamp(0, 1))) / 2)

    def _phases(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None] * self.freqs  # (N, D, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = self._phases(x)
        w = self.window
        feats = torch.cat([torch.sin(ph) * w, torch.cos(ph) * w], dim=-1)  # (N, D, 2K)
        return torch.cat([x, feats.flatten(1)], dim=-1)  # flatten, not reshape(n, -1): n may be 0

    def forward_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoding (N, E) and its exact Jacobian w.r.t. x, (N, E, D)."""
        n = x.shape[0]
        ph = self._phases(x)
        s, c = torch.sin(ph), torch.cos(ph)
        w = self.window
        enc = torch.cat([x, torch.cat([s * w, c * w], dim=-1).flatten(1)], dim=-1)
        # Each encoded column depends on one input axis: d/dx_a of column (a, j) is a diagonal entry.
        dcol = torch.cat([c * w * self.freqs, -s * w * self.freqs], dim=-1)  # (N, D, 2K)
        d = self.in_dim
        eye = torch.eye(d, device=x.device, dtype=x.dtype)
        jac_feats = dcol[:, :, :, None] * eye[None, :, None, :]  # (N, D, 2K, D)
        jac = torch.cat([eye.expand(n, d, d), jac_feats.reshape(n, 2 * d * self.n_frequencies, d)], dim=1)
        return enc, jac
