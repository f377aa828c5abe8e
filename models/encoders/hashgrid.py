"""Multiresolution hash encoding (Mueller et al., "Instant Neural Graphics Primitives", SIGGRAPH 2022)
in pure PyTorch, with an analytic input Jacobian and coarse-to-fine level activation."""
from __future__ import annotations

import math

import torch
from torch import nn

# Spatial-hash primes of Instant-NGP (the first is 1 so that coherent x stays cache friendly).
_PRIMES = (1, 2654435761, 805459861)


class HashGridEncoder(nn.Module):
    """(N, 3) points in [-bound, bound]^3 -> (N, 3 + n_levels * n_features) = [x, level features].

    Level l has ``base_resolution * b**l`` cells per axis, b chosen so the last level has
    ``finest_resolution``. Levels whose dense grid fits the table are indexed densely, the rest
    through the spatial hash. Trilinear interpolation; ``forward_with_jacobian`` returns the exact
    derivative of the encoding from the same 8 corner lookups, so SDF normals need no double
    backward through the gather.

    ``compile`` wraps the Jacobian path in ``torch.compile`` (dynamic shapes): about 1.5-2x faster
    on the CPU after a one-off compilation of 10-60 s (cached by PyTorch across runs).

    Progressive activation (Neuralangelo / instant-nsr-pl): ``start_level`` levels are active at
    step 0 and one more every ``steps_per_level`` steps; inactive levels output zero and receive no
    gradient (they are masked, not sliced, so shapes stay static).
    """

    def __init__(
        self,
        n_levels: int = 16,
        n_features: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        finest_resolution: int = 2048,
        bound: float = 1.0,
        init_scale: float = 1e-4,
        start_level: int | None = None,
        steps_per_level: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.n_levels, self.n_features, self.bound = n_levels, n_features, bound
        self.out_dim = 3 + n_levels * n_features
        self.start_level = n_levels if start_level is None else min(start_level, n_levels)
        self.steps_per_level = steps_per_level
        growth = math.exp((math.log(finest_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))
        table = self.table_size = 2**log2_table_size
        resolutions, sizes, dense = [], [], []
        for level in range(n_levels):
            res = int(math.floor(base_resolution * growth**level))
            n_vertices = (res + 1) ** 3
            resolutions.append(res)
            dense.append(n_vertices <= table)
            sizes.append(min(n_vertices, table))
        offsets = [0] + list(torch.tensor(sizes).cumsum(0)[:-1].tolist())
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.n_dense = sum(dense)  # dense levels are the coarsest ones, a prefix
        self.register_buffer("strides", torch.stack(
            [torch.ones(n_levels, dtype=torch.int64), torch.tensor(resolutions) + 1, (torch.tensor(resolutions) + 1) ** 2], -1
        ), persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.int64), persistent=False)
        self.register_buffer("n_active", torch.tensor(self.start_level, dtype=torch.int64))
        self.table = nn.Parameter(torch.empty(sum(sizes), n_features).uniform_(-init_scale, init_scale))
        self._jacobian_impl = torch.compile(self._encode_with_jacobian, dynamic=True) if compile else self._encode_with_jacobian

    @property
    def level_mask(self) -> torch.Tensor:
        """(L,) 1 for active levels, 0 for inactive ones."""
        return (torch.arange(self.n_levels, device=self.n_active.device) < self.n_active).to(self.table.dtype)

    def set_active_levels(self, n: int) -> None:
        self.n_active.fill_(max(1, min(int(n), self.n_levels)))

    def update_step(self, epoch: int, step: int) -> None:
        """Activate levels coarse to fine with the training step."""
        if self.steps_per_level > 0:
            self.set_active_levels(self.start_level + step // self.steps_per_level)

    @property
    def finest_active_resolution(self) -> float:
        return float(self.resolutions[int(self.n_active) - 1])

    def _corners(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Table rows of the 8 cell corners (N, L, 8), per-axis linear weights (N, L, 3, 2) and
        their derivatives w.r.t. x (N, L, 3, 2). Corner c = (cx, cy, cz) is c = cx + 2 cy + 4 cz.

        Per-axis terms are formed once and combined by broadcasting, which is ~8x cheaper than
        hashing every corner coordinate separately.
        """
        u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)
        pos = u[:, None, :] * self.resolutions[None, :, None]  # (N, L, 3)
        cell = torch.minimum(pos.detach().floor(), (self.resolutions - 1)[None, :, None]).to(torch.int64)
        frac = pos - cell
        lo_hi = torch.stack([cell, cell + 1], -1)  # (N, L, 3, 2)
        n_dense = self.n_dense
        dense = lo_hi[:, :n_dense] * self.strides[None, :n_dense, :, None]
        dense_idx = dense[:, :, 0, None, None, :] + dense[:, :, 1, None, :, None] + dense[:, :, 2, :, None, None]
        hashed = lo_hi[:, n_dense:] * self.primes[None, None, :, None]
        hash_idx = hashed[:, :, 0, None, None, :] ^ hashed[:, :, 1, None, :, None] ^ hashed[:, :, 2, :, None, None]
        hash_idx = hash_idx & (self.table_size - 1)  # hashed levels all have the full power-of-two table
        idx = torch.cat([dense_idx, hash_idx], 1).reshape(x.shape[0], self.n_levels, 8) + self.offsets[None, :, None]
        weights = torch.stack([1 - frac, frac], -1)  # (N, L, 3, 2)
        scale = (self.resolutions / (2 * self.bound))[None, :, None, None]
        dweights = torch.tensor([-1.0, 1.0], device=x.device, dtype=x.dtype) * scale.expand_as(weights)
        return idx, weights, dweights

    @staticmethod
    def _combine(wx: torch.Tensor, wy: torch.Tensor, wz: torch.Tensor) -> torch.Tensor:
        """Outer product of per-axis (N, L, 2) factors -> (N, L, 8) in corner order."""
        return (wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]).flatten(-3)

    def _interpolate(self, x: torch.Tensor, feats: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Masked trilinear interpolation, (N, L, 8, F) with (N, L, 8) -> encoding (N, 3 + L F)."""
        out = (w[..., None, :] @ feats).squeeze(-2) * self.level_mask[None, :, None]
        return torch.cat([x, out.reshape(x.shape[0], self.n_levels * self.n_features)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx, w, _ = self._corners(x)
        return self._interpolate(x, self.table[idx], self._combine(w[:, :, 0], w[:, :, 1], w[:, :, 2]))

    def forward_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoding (N, D) and its Jacobian w.r.t. x, (N, D, 3), from one set of corner lookups."""
        return self._jacobian_impl(x)

    def _encode_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx, w, dw = self._corners(x)
        feats = self.table[idx]
        wx, wy, wz = w.unbind(2)
        dx, dy, dz = dw.unbind(2)
        enc = self._interpolate(x, feats, self._combine(wx, wy, wz))
        dweights = torch.stack([self._combine(dx, wy, wz), self._combine(wx, dy, wz), self._combine(wx, wy, dz)], -1)
        jac = torch.einsum("nlcf,nlca->nlfa", feats, dweights) * self.level_mask[None, :, None, None]
        n = x.shape[0]
        eye = torch.eye(3, device=x.device, dtype=x.dtype).expand(n, 3, 3)
        return enc, torch.cat([eye, jac.reshape(n, self.n_levels * self.n_features, 3)], dim=1)
