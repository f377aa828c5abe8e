"""Multiresolution hash encoding (Mueller et al., "Instant Neural Graphics Primitives", SIGGRAPH 2022)
in pure PyTorch, with an analytic input Jacobian, coarse-to-fine level activation and an optional
tiny-cuda-nn backend."""
from __future__ import annotations

import math

import torch
from torch import nn

from models.encoders.fused_hashgrid import fused_available, fused_hash_encode
from models.encoders.progressive import ProgressiveLevels
from models.encoders.tcnn import TcnnHashGrid, resolve_backend

# Spatial-hash primes of Instant-NGP (the first is 1 so that coherent x stays cache friendly).
_PRIMES = (1, 2654435761, 805459861)


def level_growth(n_levels: int, base_resolution: int, finest_resolution: int) -> float:
    """Per-level resolution factor b with ``base_resolution * b**(L-1) = finest_resolution``."""
    return math.exp((math.log(finest_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))


def level_resolutions(n_levels: int, base_resolution: int, finest_resolution: int) -> list[int]:
    """Cells per axis of each level, ``floor(base_resolution * b**l)``."""
    growth = level_growth(n_levels, base_resolution, finest_resolution)
    return [int(math.floor(base_resolution * growth**level)) for level in range(n_levels)]


class HashGridEncoder(ProgressiveLevels):
    """(N, 3) points in [-bound, bound]^3 -> (N, 3 + n_levels * n_features) = [x, level features].

    Level l has ``base_resolution * b**l`` cells per axis, b chosen so the last level has
    ``finest_resolution``. Levels whose dense grid fits the table are indexed densely, the rest
    through the spatial hash. Trilinear interpolation; ``forward_with_jacobian`` returns the exact
    derivative of the encoding from the same 8 corner lookups, so SDF normals need no double
    backward through the gather.

    ``compile`` wraps the Jacobian path in ``torch.compile`` (dynamic shapes; :meth:`compile_jacobian`): about 1.5-2x faster
    on the CPU after a one-off compilation of 10-60 s (cached by PyTorch across runs).

    Progressive activation (``ProgressiveLevels``): ``start_level`` levels are active at step 0 and
    one more every ``steps_per_level`` steps; inactive levels output zero and receive no gradient.

    On CUDA with Triton (PyTorch's CUDA builds ship it), ``forward`` (the path of SDF values and of
    finite-difference gradients) runs the fused kernel of ``models.encoders.fused_hashgrid``; it
    has no double backward, which only the autograd-normal path would need, and that path uses
    ``forward_with_jacobian`` here.

    ``backend``: 'torch' (this file), 'tcnn' (tiny-cuda-nn's fused kernels, ``TcnnHashGrid``; no
    analytic Jacobian, so fields fall back to autograd) or 'auto' (tcnn when tinycudann imports and
    CUDA is available).
    """

    def __init__(
        self,
        n_levels: int,
        n_features: int,
        log2_table_size: int,
        base_resolution: int,
        finest_resolution: int,
        bound: float = 1.0,
        init_scale: float = 1e-4,
        start_level: int | None = None,
        steps_per_level: int = 0,
        compile: bool = False,
        backend: str = "torch",
    ) -> None:
        resolutions = level_resolutions(n_levels, base_resolution, finest_resolution)
        super().__init__(resolutions, start_level, steps_per_level)
        self.n_features, self.bound = n_features, bound
        self.out_dim = 3 + n_levels * n_features
        self.backend = resolve_backend(backend)
        if self.backend == "tcnn":
            growth = level_growth(n_levels, base_resolution, finest_resolution)
            self.tcnn = TcnnHashGrid(n_levels, n_features, log2_table_size, base_resolution, growth, bound)
            return
        table = self.table_size = 2**log2_table_size
        sizes, dense = [], []
        for res in resolutions:
            n_vertices = (res + 1) ** 3
            dense.append(n_vertices <= table)
            sizes.append(min(n_vertices, table))
        offsets = [0] + list(torch.tensor(sizes).cumsum(0)[:-1].tolist())
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.n_dense = sum(dense)  # dense levels are the coarsest ones, a prefix
        self.register_buffer("strides", torch.stack(
            [torch.ones(n_levels, dtype=torch.int64), torch.tensor(resolutions) + 1, (torch.tensor(resolutions) + 1) ** 2], -1
        ), persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.int64), persistent=False)
        self.table = nn.Parameter(torch.empty(sum(sizes), n_features).uniform_(-init_scale, init_scale))
        self.compile_jacobian(compile)

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
        if self.backend == "tcnn":
            feats = self.tcnn(x).reshape(x.shape[0], self.n_levels, self.n_features) * self.level_mask[None, :, None]
            return torch.cat([x, feats.reshape(x.shape[0], self.n_levels * self.n_features)], dim=-1)
        if x.is_cuda and x.dtype == torch.float32 and fused_available(x.device):
            # One Triton kernel for the gather + interpolation and its first-order backward.
            feats = fused_hash_encode(x, self.table, self.resolutions, self.offsets, self.n_dense, self.table_size,
                                      self.level_mask, self.bound)
            return torch.cat([x, feats], dim=-1)
        idx, w, _ = self._corners(x)
        return self._interpolate(x, self.table[idx], self._combine(w[:, :, 0], w[:, :, 1], w[:, :, 2]))

    @property
    def has_jacobian(self) -> bool:
        """Whether :meth:`forward_with_jacobian` works: on every back end but tcnn (fields use autograd there)."""
        return self.backend != "tcnn"

    def forward_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, 3) -> (encoding (N, D), its Jacobian w.r.t. x (N, D, 3))`` from one set of corner lookups."""
        if not self.has_jacobian:
            raise RuntimeError("the tcnn backend has no analytic Jacobian (see has_jacobian)")
        return self._jacobian(x)

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
