"""Neural Fourier Filter Bank encoding (Wu, Jin, Yi, "Neural Fourier Filter Bank", CVPR 2023,
arXiv 2212.01735), 3D SDF variant, with an analytic input Jacobian."""
from __future__ import annotations

import math

import torch
from torch import nn

from models.encoders.hashgrid import HashGridEncoder, level_resolutions
from models.encoders.progressive import ProgressiveLevels


class NFFBEncoder(ProgressiveLevels):
    """(N, 3) points in [-bound, bound]^3 -> (N, 3 + n_levels * width) = [x, level outputs].

    A filter bank of L levels, coarse to fine. Level l has
      * a high-frequency branch: the hash-grid feature of grid level l, g_l(x) (F values, from a
        ``HashGridEncoder`` with the same resolutions), lifted by a trainable Fourier feature
        mapping f_l = sin(2 pi sigma_l B_l g_l), B_l (width, F) ~ N(0, 1), the scale sigma_l growing
        geometrically from ``fourier_scale_min`` (level 0) to ``fourier_scale_max`` (level L-1);
      * a low-frequency branch: one sine layer of a SIREN chain (Sitzmann et al., NeurIPS 2020),
        h_l = sin(W_l h_{l-1} + b_l) + f_l with h_{-1} = x, so each layer band-limits the running
        signal and adds the level's high-frequency features to it.
    The encoding concatenates the level outputs h_l (masked by ``level_mask``). NFFB sums one linear
    output layer per level; the first layer of the SDF MLP that reads this encoding is exactly
    that sum of per-level linear layers.

    SIREN initialisation in an equalised-learning-rate parametrisation (Karras et al., ICLR 2018):
    W_l = gain * V_l with V_l ~ U(-1, 1), gain ``omega_0 / 3`` for the first layer (SIREN's
    U(-1/3, 1/3) times omega_0) and sqrt(6 / width) for the others (SIREN's hidden bound, in which
    omega cancels), biases uniform phases in [-pi, pi]. Adam then moves every parameter on the same
    relative scale as the hash table it shares the encoder learning rate with.

    ``forward_with_jacobian`` carries the grid's analytic Jacobian through the chain,
    J(h_l) = diag(cos(pre_l)) W_l J(h_{l-1}) + diag(cos(2 pi sigma_l B_l g_l)) 2 pi sigma_l B_l J(g_l),
    so SDF normals need no double backward. ``backend`` selects the grid's backend (see
    ``HashGridEncoder``); with tcnn there is no analytic Jacobian and fields use autograd.
    ``compile`` wraps the Jacobian path in ``torch.compile`` (:meth:`compile_jacobian`).
    """

    def __init__(
        self,
        n_levels: int = 8,
        n_features: int = 2,
        log2_table_size: int = 17,
        base_resolution: int = 16,
        finest_resolution: int = 256,
        width: int = 8,
        omega_0: float = 30.0,
        fourier_scale_min: float = 1.0,
        fourier_scale_max: float = 8.0,
        bound: float = 1.0,
        init_scale: float = 1e-4,
        start_level: int | None = None,
        steps_per_level: int = 0,
        compile: bool = False,
        backend: str = "torch",
    ) -> None:
        super().__init__(level_resolutions(n_levels, base_resolution, finest_resolution), start_level, steps_per_level)
        # The grid's own levels stay active: this encoder masks whole filter-bank levels instead.
        self.grid = HashGridEncoder(n_levels, n_features, log2_table_size, base_resolution, finest_resolution, bound,
                                    init_scale, backend=backend)
        self.backend = self.grid.backend
        self.n_features, self.width, self.bound = n_features, width, bound
        self.out_dim = 3 + n_levels * width
        scales = torch.exp(torch.linspace(math.log(fourier_scale_min), math.log(fourier_scale_max), n_levels))
        self.register_buffer("fourier_gain", 2 * math.pi * scales, persistent=False)
        self.fourier = nn.Parameter(torch.randn(n_levels, width, n_features))
        self.first_gain, self.hidden_gain = omega_0 / 3.0, math.sqrt(6.0 / width)
        self.first = nn.Parameter(torch.empty(width, 3).uniform_(-1.0, 1.0))
        self.hidden = nn.Parameter(torch.empty(n_levels - 1, width, width).uniform_(-1.0, 1.0))
        self.bias = nn.Parameter(torch.empty(n_levels, width).uniform_(-math.pi, math.pi))
        self.compile_jacobian(compile)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x, jacobian=False)[0]

    @property
    def has_jacobian(self) -> bool:
        """Whether :meth:`forward_with_jacobian` works: when the grid's does (not on the tcnn backend)."""
        return self.grid.has_jacobian

    def forward_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, 3) -> (encoding (N, D), its Jacobian w.r.t. x (N, D, 3))``."""
        if not self.has_jacobian:
            raise RuntimeError("the tcnn backend has no analytic Jacobian (see has_jacobian)")
        return self._jacobian(x)

    def _encode_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(x, jacobian=True)

    def _layer(self, level: int, h: torch.Tensor, jh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pre-activation (N, W) of level ``level``'s sine layer from its input h (N, I), and its
        derivatives (N, 3, W) from the input's, jh (N, 3, I), when given (axis-major layout)."""
        weight = self.first_gain * self.first if level == 0 else self.hidden_gain * self.hidden[level - 1]
        pre = h @ weight.T + self.bias[level]
        return pre, None if jh is None else jh @ weight.T

    def _combine(self, h: torch.Tensor, jh: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Level outputs (N, L, W) and derivatives (N, L, 3, W) -> the encoded blocks: inactive levels zeroed."""
        mask = self.level_mask[None, :, None]
        return h * mask, None if jh is None else jh * mask[..., None]

    def _encode(self, x: torch.Tensor, jacobian: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, n_levels = x.shape[0], self.n_levels
        if jacobian:
            grid, grid_jac = self.grid.forward_with_jacobian(x)
            grid_jacs = grid_jac[:, 3:].reshape(n, n_levels, self.n_features, 3).transpose(2, 3).unbind(1)  # (N, 3, F) each
        else:
            grid = self.grid(x)
        feats = grid[:, 3:].reshape(n, n_levels, self.n_features).unbind(1)
        freqs = (self.fourier * self.fourier_gain[:, None, None]).unbind(0)  # (W, F) each
        eye = torch.eye(3, device=x.device, dtype=x.dtype).expand(n, 3, 3)
        h, jh = x, (eye if jacobian else None)
        outs, jacs = [], []
        for level in range(n_levels):
            phase = feats[level] @ freqs[level].T  # Fourier features of the level's grid feature
            pre, jpre = self._layer(level, h, jh)
            h = torch.sin(pre) + torch.sin(phase)
            outs.append(h)
            if jacobian:
                jh = torch.cos(pre)[:, None] * jpre + torch.cos(phase)[:, None] * (grid_jacs[level] @ freqs[level].T)
                jacs.append(jh)
        out, jac = self._combine(torch.stack(outs, 1), torch.stack(jacs, 1) if jacobian else None)
        enc = torch.cat([x, out.reshape(n, n_levels * self.width)], dim=-1)
        if not jacobian:
            return enc, None
        jac = jac.permute(0, 2, 1, 3).reshape(n, 3, n_levels * self.width)
        return enc, torch.cat([eye, jac], dim=2).transpose(1, 2)
