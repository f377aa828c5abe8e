"""Fused multiresolution hash-grid encoding (Mueller et al., "Instant Neural Graphics Primitives with a
Multiresolution Hash Encoding", SIGGRAPH 2022) as a Triton kernel pair.

One forward kernel gathers the 8 cell corners of every level and interpolates them trilinearly; one
backward kernel scatters ``grad_out * weight`` into the table gradient (``tl.atomic_add``) and,
when x needs a gradient (trainable cameras, points that depend on rays), accumulates d out / d x
from the weight derivatives. Semantics are exactly those of ``HashGridEncoder`` (models/encoders/
hashgrid.py): same clamping, cell choice, corner order, dense/hashed indexing and level mask, so
the two are interchangeable; only the level features (N, L F) are produced, not the xyz prefix.

Triton ships with PyTorch's CUDA builds, so this needs no extra install on a GPU; on the CPU it runs
under Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is imported; slow, for
tests only). The import of triton is guarded: without it this module imports and
``fused_available`` is False.

First-order backward only: differentiating the gradient again (double backward) raises. SDF
normals and the eikonal loss therefore use finite differences or the encoder's analytic Jacobian
path (``HashGridEncoder.forward_with_jacobian``), never a second backward through this kernel.
"""
from __future__ import annotations

import os

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU CI: no triton; fused_available() is False and nothing below is defined
    triton = None

BLOCK = 128  # points per program


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused kernels can run on tensors of ``device``: triton imports and the device is
    CUDA, or Triton's interpreter is on (``TRITON_INTERPRET=1``)."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _axis(x, res, bound, extent):
        """Cell (uint32), fraction in it and d fraction / d x of one axis of a level, as PyTorch's
        ``clamp((x + bound) / extent, 0, 1) * res`` gives them (clamp passes gradient on [0, 1])."""
        u = (x + bound) / extent
        pos = tl.minimum(tl.maximum(u, 0.0), 1.0) * res
        cell = tl.minimum(tl.floor(pos), res - 1.0)
        slope = tl.where((u >= 0.0) & (u <= 1.0), res / extent, 0.0)
        return cell.to(tl.uint32), pos - cell, slope

    @triton.jit
    def _factor(frac, bit: tl.constexpr):
        """Linear weight of the low (bit 0: 1 - frac) or high (bit 1: frac) corner along one axis."""
        if bit:
            return frac
        else:
            return 1.0 - frac

    @triton.jit
    def _rows(X, Y, Z, stride_y, dense, hash_mask, offset):
        """Table rows (int64) of corner coordinates (uint32): dense index on dense levels, spatial hash
        otherwise. uint32 wrap-around keeps the low bits of the int64 products, which is all the
        power-of-two mask of the PyTorch encoder keeps."""
        dense_idx = X + Y * stride_y + Z * (stride_y * stride_y)  # wraps on hashed levels, unused there
        hash_idx = (X ^ (Y * 2654435761) ^ (Z * 805459861)) & hash_mask
        return tl.where(dense, dense_idx, hash_idx).to(tl.int64) + offset

    @triton.jit
    def _forward_kernel(x_ptr, table_ptr, res_ptr, offset_ptr, mask_ptr, out_ptr, n_points, n_levels, n_dense,
                        hash_mask, bound, extent, F: tl.constexpr, BLOCK: tl.constexpr):
        """One program per BLOCK points, looping over levels: out[n, l F : (l + 1) F] = level_mask[l] *
        sum_c weight_c(x_n) table[row_c(x_n)], accumulated in float32."""
        pts = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: N (L F) may pass 2^31
        valid = pts < n_points
        feat = tl.arange(0, F)
        x0 = tl.load(x_ptr + pts * 3, mask=valid, other=0.0)
        x1 = tl.load(x_ptr + pts * 3 + 1, mask=valid, other=0.0)
        x2 = tl.load(x_ptr + pts * 3 + 2, mask=valid, other=0.0)
        for level in range(n_levels):
            res = tl.load(res_ptr + level)
            offset = tl.load(offset_ptr + level)
            on = tl.load(mask_ptr + level)
            cx, fx, _ = _axis(x0, res, bound, extent)
            cy, fy, _ = _axis(x1, res, bound, extent)
            cz, fz, _ = _axis(x2, res, bound, extent)
            stride_y = res.to(tl.uint32) + 1
            # points of an inactive level count as out of range: they read nothing. (Not `valid & (on != 0)`:
            # Triton 3.9's interpreter cannot broadcast a scalar comparison result.)
            live = (pts < tl.where(on != 0.0, n_points, 0))[:, None]
            acc = tl.zeros((BLOCK, F), dtype=tl.float32)
            for c in tl.static_range(8):  # corner c = cx + 2 cy + 4 cz
                rows = _rows(cx + (c & 1), cy + (c >> 1 & 1), cz + (c >> 2), stride_y, level < n_dense, hash_mask,
                             offset)
                w = _factor(fz, c >> 2) * _factor(fy, c >> 1 & 1) * _factor(fx, c & 1)
                vals = tl.load(table_ptr + rows[:, None] * F + feat[None, :], mask=live, other=0.0)
                acc += w[:, None] * vals.to(tl.float32)
            tl.store(out_ptr + pts[:, None] * (n_levels * F) + level * F + feat[None, :], acc * on, mask=valid[:, None])

    @triton.jit
    def _backward_kernel(x_ptr, table_ptr, res_ptr, offset_ptr, mask_ptr, grad_out_ptr, grad_table_ptr, grad_x_ptr,
                         n_points, n_levels, n_dense, hash_mask, bound, extent, F: tl.constexpr, BLOCK: tl.constexpr,
                         TABLE_GRAD: tl.constexpr, X_GRAD: tl.constexpr):
        """Same program layout as the forward. Table: grad_table[row_c] += level_mask * weight_c * grad_out
        (atomics: many points share a corner). x: sum over levels and corners of
        <grad_out, table[row_c]> * d weight_c / d x, d weight_c / d x_a = (+-1) slope_a * (other two
        factors); accumulated in registers across levels, so x needs no atomics."""
        pts = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: N (L F) may pass 2^31
        valid = pts < n_points
        feat = tl.arange(0, F)
        x0 = tl.load(x_ptr + pts * 3, mask=valid, other=0.0)
        x1 = tl.load(x_ptr + pts * 3 + 1, mask=valid, other=0.0)
        x2 = tl.load(x_ptr + pts * 3 + 2, mask=valid, other=0.0)
        gx0 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx1 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx2 = tl.zeros((BLOCK,), dtype=tl.float32)
        for level in range(n_levels):
            res = tl.load(res_ptr + level)
            offset = tl.load(offset_ptr + level)
            on = tl.load(mask_ptr + level)
            cx, fx, sx = _axis(x0, res, bound, extent)
            cy, fy, sy = _axis(x1, res, bound, extent)
            cz, fz, sz = _axis(x2, res, bound, extent)
            stride_y = res.to(tl.uint32) + 1
            live = (pts < tl.where(on != 0.0, n_points, 0))[:, None]  # inactive level: no gradient, no atomics
            g = tl.load(grad_out_ptr + pts[:, None] * (n_levels * F) + level * F + feat[None, :], mask=live, other=0.0)
            g = g * on
            for c in tl.static_range(8):
                rows = _rows(cx + (c & 1), cy + (c >> 1 & 1), cz + (c >> 2), stride_y, level < n_dense, hash_mask,
                             offset)
                wx = _factor(fx, c & 1)
                wy = _factor(fy, c >> 1 & 1)
                wz = _factor(fz, c >> 2)
                ptrs = rows[:, None] * F + feat[None, :]
                if TABLE_GRAD:
                    tl.atomic_add(grad_table_ptr + ptrs, g * (wz * wy * wx)[:, None], mask=live)
                if X_GRAD:
                    dot = tl.sum(g * tl.load(table_ptr + ptrs, mask=live, other=0.0).to(tl.float32), axis=1)
                    # high corner: d frac / dx = +slope, low corner: d (1 - frac) / dx = -slope
                    gx0 += dot * wy * wz * sx * (2.0 * (c & 1) - 1.0)
                    gx1 += dot * wx * wz * sy * (2.0 * (c >> 1 & 1) - 1.0)
                    gx2 += dot * wx * wy * sz * (2.0 * (c >> 2) - 1.0)
        if X_GRAD:
            tl.store(grad_x_ptr + pts * 3, gx0, mask=valid)
            tl.store(grad_x_ptr + pts * 3 + 1, gx1, mask=valid)
            tl.store(grad_x_ptr + pts * 3 + 2, gx2, mask=valid)


class _FusedHashEncode(torch.autograd.Function):
    """Autograd wrapper of the kernel pair; gradients for x and table, none for the grid buffers."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor,
                offsets: torch.Tensor, level_mask: torch.Tensor, n_dense: int, table_size: int,
                bound: float) -> torch.Tensor:
        n_levels, n_features = resolutions.shape[0], table.shape[1]
        out = torch.empty(x.shape[0], n_levels * n_features, device=x.device, dtype=torch.float32)
        ctx.save_for_backward(x, table, resolutions, offsets, level_mask)
        ctx.scalars = (n_dense, table_size - 1, bound, 2.0 * bound)
        if x.shape[0] > 0:
            _forward_kernel[(triton.cdiv(x.shape[0], BLOCK),)](
                x, table, resolutions, offsets, level_mask, out, x.shape[0], n_levels, *ctx.scalars,
                F=n_features, BLOCK=BLOCK)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, table, resolutions, offsets, level_mask = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[:2]
        # float32 accumulation of the scattered table gradient, cast to the table's dtype at the end
        grad_table = torch.zeros(table.shape, device=x.device, dtype=torch.float32) if need_table else None
        grad_x = torch.empty_like(x) if need_x else None
        if x.shape[0] > 0 and (need_x or need_table):
            _backward_kernel[(triton.cdiv(x.shape[0], BLOCK),)](
                x, table, resolutions, offsets, level_mask, grad_out.contiguous().float(), grad_table, grad_x,
                x.shape[0], resolutions.shape[0], *ctx.scalars, F=table.shape[1], BLOCK=BLOCK,
                TABLE_GRAD=need_table, X_GRAD=need_x)
        if grad_table is not None:
            grad_table = grad_table.to(table.dtype)
        return grad_x, grad_table, None, None, None, None, None, None


def fused_hash_encode(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor, offsets: torch.Tensor,
                      n_dense: int, table_size: int, level_mask: torch.Tensor, bound: float) -> torch.Tensor:
    """Hash-grid level features of ``HashGridEncoder`` from the fused Triton kernels.

    x (N, 3) float32 in [-bound, bound] (clamped like the encoder); table (T, F) float32 or float16,
    F a power of two; resolutions (L,) cells per axis; offsets (L,) first table row of each level;
    the first ``n_dense`` levels are indexed densely, the others hashed into ``table_size`` rows;
    level_mask (L,) 0/1. Returns (N, L F) float32, level-major. Differentiable once w.r.t. x and table.
    """
    if not fused_available(x.device):
        raise RuntimeError("fused hash encoding needs triton and a CUDA device (or TRITON_INTERPRET=1)")
    if x.dtype != torch.float32 or table.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"need float32 points and a float32/float16 table, got {x.dtype} and {table.dtype}")
    n_features = table.shape[1]
    if n_features & (n_features - 1):
        raise ValueError(f"features per level must be a power of two for the kernel, got {n_features}")
    return _FusedHashEncode.apply(
        x.contiguous(), table.contiguous(), resolutions.to(torch.float32).contiguous(),
        offsets.to(torch.int64).contiguous(), level_mask.to(torch.float32).contiguous(),
        int(n_dense), int(table_size), float(bound))
