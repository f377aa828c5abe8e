"""Style-modulated Neural Fourier Filter Bank: NFFB (Wu et al., CVPR 2023) whose sine layers are
modulated per point as in StyleGAN2 (Karras et al., "Analyzing and Improving the Image Quality of
StyleGAN", CVPR 2020), with an attention over levels weighing their contributions."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models.encoders.nffb import NFFBEncoder

_DEMOD_EPS = 1e-8


class StyleModNFFBEncoder(NFFBEncoder):
    """``NFFBEncoder`` (same arguments, same output layout) with two changes.

    Style modulation of the sine layers of levels l >= 1. The layer's input h = h_{l-1} is the
    running low-frequency signal, i.e. the features of all coarser levels at the point; it gives
    the level a style s_l = A_l h / sqrt(width) + c_l (A_l initialised to 0, c_l to 1). The layer's
    weight V_l (W x W) is modulated per point, V'_oi = V_oi s_i, and demodulated by its row norm,
    V''_oi = V'_oi / sqrt(sum_i V'_oi^2 + 1e-8), so every output unit sees a unit-norm weight row
    whatever the style's scale; the layer computes sin(sqrt(2) V'' h + b_l), sqrt(2) being the
    expected row norm of SIREN's hidden weights. It is evaluated without forming per-point
    weights: V'' h = d * (V (s * h)) with d_o = (sum_i V_oi^2 s_i^2 + 1e-8)^(-1/2). Level 0 reads
    raw xyz, which has nothing coarser to take a style from: it is NFFB's plain first layer.

    Attention over levels: a learned query per level scores the level's output,
    e_l = q_l . h_l / sqrt(width) (q_l initialised to 0), and a_l = softmax over the L levels of
    e_l, inactive levels excluded (their score is -inf, so a_l = 0 and no gradient reaches them).
    Level l's block of the encoding is n_active * a_l * h_l: at initialisation a_l = 1 / n_active,
    so the attention starts neutral (blocks h_l, as in NFFB).

    ``forward_with_jacobian`` differentiates both analytically (the style depends on x through h).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n_levels, width = self.n_levels, self.width
        self.equal_gain = 1.0 / math.sqrt(width)
        self.style = nn.Parameter(torch.zeros(n_levels - 1, width, width))
        self.style_bias = nn.Parameter(torch.ones(n_levels - 1, width))
        self.query = nn.Parameter(torch.zeros(n_levels, width))

    def _layer(self, level: int, h: torch.Tensor, jh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Modulated and demodulated pre-activation (N, W) and its derivatives (N, 3, W)."""
        if level == 0:
            return super()._layer(level, h, jh)
        affine = self.equal_gain * self.style[level - 1]
        weight = self.hidden[level - 1]
        style = h @ affine.T + self.style_bias[level - 1]  # (N, W)
        mod = (style * h) @ weight.T  # V (s * h)
        demod = ((style * style) @ (weight * weight).T + _DEMOD_EPS).rsqrt()  # (N, W)
        gain = math.sqrt(2.0)
        pre = gain * demod * mod + self.bias[level]
        if jh is None:
            return pre, None
        jstyle = jh @ affine.T  # (N, 3, W)
        jmod = (h[:, None] * jstyle + style[:, None] * jh) @ weight.T
        jdemod = -demod[:, None] ** 3 * ((style[:, None] * jstyle) @ (weight * weight).T)
        return pre, gain * (demod[:, None] * jmod + mod[:, None] * jdemod)

    def level_attention(self, h: torch.Tensor) -> torch.Tensor:
        """Attention weights over levels (N, L) from the level outputs h (N, L, W): a softmax across
        the levels, zero on inactive ones, each row summing to 1."""
        scores = (h * self.query).sum(-1) * self.equal_gain
        return torch.softmax(scores.masked_fill(self.level_mask == 0, float("-inf")), dim=1)

    def _combine(self, h: torch.Tensor, jh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Blocks n_active a_l h_l (N, L, W) and their derivatives n_active (a_l J(h_l) + grad(a_l) h_l^T) (N, L, 3, W)."""
        attention = self.level_attention(h)
        scale = self.n_active.to(h.dtype) * attention  # (N, L)
        out = scale[..., None] * h
        if jh is None:
            return out, None
        jscore = (jh * self.query[:, None]).sum(-1) * self.equal_gain  # (N, L, 3)
        jattention = attention[..., None] * (jscore - (attention[..., None] * jscore).sum(1, keepdim=True))
        return out, scale[..., None, None] * jh + self.n_active.to(h.dtype) * jattention[..., None] * h[:, :, None]
