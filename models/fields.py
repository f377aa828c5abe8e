"""Neural fields: a signed distance field (encoder -> MLP) and a colour field."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from models.encoders.spherical_harmonics import spherical_harmonics
from models.interfaces import Encoder, LevelledEncoder, jacobian_of

GRAD_TYPES = ("analytic", "finite_difference")


def make_activation(name: str, beta: float = 100.0) -> nn.Module:
    """'softplus' (with ``beta``, as NeuS/IDR), 'relu', 'silu' or 'elu'."""
    table = {"softplus": lambda: nn.Softplus(beta=beta), "relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]()


@contextlib.contextmanager
def weights_computed_once(module: nn.Module) -> Iterator[None]:
    """Within the block, every parametrised weight of ``module`` (weight normalisation) is computed once, in the
    current grad mode, and reused by every call, instead of on each call: sphere tracing and dense sampling call
    an SDF network dozens of times a step. Autograd still reaches the underlying parameters through the one
    cached computation. The weights must not change inside the block (no optimiser step)."""
    with parametrize.cached():
        for part in module.modules():  # computed here, so calls under no_grad (sphere tracing) reuse a differentiable copy
            if parametrize.is_parametrized(part):
                for name in part.parametrizations:
                    getattr(part, name)
        yield


class SDFField(nn.Module):
    """SDF and geometry feature: x (N, 3) -> sdf (N,), feature (N, feature_dim).

    Geometric initialisation (Atzmon & Lipman, SAL, CVPR 2020; as used by IDR) makes the network
    start as ``|x| - init_radius`` (or its negation with ``inside_out``). It holds for any encoder
    whose output begins with the raw xyz: the first layer's other columns start at zero.
    An optional skip connection re-injects the encoding at ``skip_layer`` (IDR: layer 4).

    ``grad_type`` chooses how the spatial gradient is computed: 'analytic' (autograd, through the
    encoder's Jacobian when it has one) or 'finite_difference', central differences from 6 extra
    SDF evaluations (Neuralangelo, Li et al., CVPR 2023). Their step h follows the finest active
    level of a multi-level encoder, h = bound / resolution (half a cell, Neuralangelo's epsilon),
    so it shrinks as levels are activated and the gradient smooths over the detail not yet
    learnt; encoders without levels use ``fd_step``. Finite-difference gradients are plain
    functions of the SDF, so losses on them need first-order backward only.
    """

    def __init__(
        self,
        encoder: Encoder,
        hidden_dim: int,
        n_layers: int,
        feature_dim: int = 15,
        activation: str = "softplus",
        beta: float = 100.0,
        init_radius: float = 0.5,
        geometric_init: bool = True,
        weight_norm: bool = True,
        inside_out: bool = False,
        skip_layer: int | None = None,
        grad_type: str = "analytic",
        fd_step: float = 1e-3,
    ) -> None:
        super().__init__()
        if grad_type not in GRAD_TYPES:
            raise ValueError(f"unknown grad_type {grad_type!r}; choose one of {', '.join(GRAD_TYPES)}")
        self.grad_type, self.fd_step = grad_type, fd_step
        self.encoder = encoder
        self.feature_dim = feature_dim
        self.skip_layer = skip_layer
        in_dim = encoder.out_dim
        dims = [in_dim] + [hidden_dim] * n_layers + [1 + feature_dim]
        self.layers = nn.ModuleList()
        for i in range(len(dims) - 1):
            out_dim = dims[i + 1] - (in_dim if skip_layer is not None and i + 1 == skip_layer else 0)
            layer = nn.Linear(dims[i], out_dim)
            if geometric_init:
                skip_dim = in_dim if i == skip_layer else 0
                self._geometric_init(layer, i == 0, i == len(dims) - 2, init_radius, inside_out, skip_dim)
            self.layers.append(nn.utils.parametrizations.weight_norm(layer) if weight_norm else layer)
        self.activation = make_activation(activation, beta)

    @staticmethod
    def _geometric_init(layer: nn.Linear, first: bool, last: bool, radius: float, inside_out: bool, skip_enc_dim: int) -> None:
        """SAL/IDR init; ``skip_enc_dim`` > 0 marks a layer fed [h, encoding] (its non-xyz columns start at 0)."""
        out_dim, in_dim = layer.weight.shape
        with torch.no_grad():
            if last:
                sign = -1.0 if inside_out else 1.0
                nn.init.normal_(layer.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(layer.bias, -sign * radius)
                return
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(out_dim))
            nn.init.zeros_(layer.bias)
            if first:
                layer.weight[:, 3:] = 0.0
            elif skip_enc_dim > 3:
                layer.weight[:, -(skip_enc_dim - 3):] = 0.0

    def _mlp(self, enc: torch.Tensor) -> torch.Tensor:
        h = enc
        for i, layer in enumerate(self.layers):
            if i == self.skip_layer:
                h = torch.cat([h, enc], dim=-1) / math.sqrt(2.0)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._mlp(self.encoder(x))
        return out[:, 0], out[:, 1:]

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,)."""
        return self.forward(x)[0]

    def finite_difference_step(self) -> float:
        """Step h of the finite differences: half a cell of the encoder's finest active level
        (``bound / finest_active_resolution``) or ``fd_step`` for encoders without levels."""
        if not isinstance(self.encoder, LevelledEncoder):
            return self.fd_step
        return float(self.encoder.bound) / float(self.encoder.finest_active_resolution)

    def forward_with_gradient(self, x: torch.Tensor, create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """sdf (N,), feature (N, C) and the spatial gradient of the sdf (N, 3), as ``grad_type`` says.

        ``create_graph`` keeps the gradient differentiable (eikonal and curvature losses).
        """
        sdf, feature, grad, _ = self.forward_with_derivatives(x, create_graph)
        return sdf, feature, grad

    def forward_with_derivatives(self, x: torch.Tensor, create_graph: bool = True, laplacian: bool = False
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """sdf (N,), feature (N, C), gradient (N, 3) and, with ``laplacian``, the Laplacian (N,) or None.

        The Laplacian (trace of the SDF's Hessian, twice its mean curvature on the level set where
        |grad| = 1; Neuralangelo's curvature loss) is always the central second difference
        sum_a (f(x + h e_a) + f(x - h e_a) - 2 f(x)) / h^2 on the 6-point stencil of
        :meth:`finite_difference_step`: free with finite-difference gradients, 6 extra SDF
        evaluations (no extra gradients) with analytic ones.
        """
        if self.grad_type == "finite_difference":
            with torch.set_grad_enabled(create_graph):
                h = self.finite_difference_step()
                n = x.shape[0]
                out = self._mlp(self.encoder(torch.cat([x, self._stencil(x, h)])))
                sdf, feature = out[:n, 0], out[:n, 1:]
                plus, minus = out[n:, 0].view(n, 6).split(3, dim=1)
                grad = (plus - minus) / (2.0 * h)
                lap = (plus + minus - 2.0 * sdf[:, None]).sum(-1) / h**2 if laplacian else None
            return sdf, feature, grad, lap
        sdf, feature, grad = self._analytic_gradient(x, create_graph)
        lap = None
        if laplacian:
            with torch.set_grad_enabled(create_graph):
                h = self.finite_difference_step()
                plus, minus = self.sdf(self._stencil(x, h)).view(-1, 6).split(3, dim=1)
                lap = (plus + minus - 2.0 * sdf[:, None]).sum(-1) / h**2
        return sdf, feature, grad, lap

    @staticmethod
    def _stencil(x: torch.Tensor, h: float) -> torch.Tensor:
        """(N, 3) -> (6 N, 3): x + h e_x, x + h e_y, x + h e_z, x - h e_x, x - h e_y, x - h e_z per point."""
        eye = torch.eye(3, device=x.device, dtype=x.dtype) * h
        return (x[:, None, :] + torch.cat([eye, -eye])).reshape(-1, 3)

    def _analytic_gradient(self, x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autograd gradient. With an encoder that provides its Jacobian the gradient is
        (d sdf / d enc) @ (d enc / d x): autograd only differentiates the small MLP, never the
        encoder's gather."""
        with torch.enable_grad():
            jacobian = jacobian_of(self.encoder)
            if jacobian is not None:
                enc, jac = jacobian(x)
                if not enc.requires_grad:
                    enc.requires_grad_(True)
                out = self._mlp(enc)
                g_enc = torch.autograd.grad(out[:, 0].sum(), enc, create_graph=create_graph)[0]
                grad = torch.einsum("nd,nda->na", g_enc, jac)
            else:
                x = x if x.requires_grad else x.detach().requires_grad_(True)
                out = self._mlp(self.encoder(x))
                grad = torch.autograd.grad(out[:, 0].sum(), x, create_graph=create_graph)[0]
        if not create_graph:
            out, grad = out.detach(), grad.detach()
        return out[:, 0], out[:, 1:], grad


class ColorField(nn.Module):
    """Radiance from position, normal, view direction and geometry feature -> (N, 3) in [0, 1].

    ``mode``: 'idr' uses (x, view direction, normal, feature); 'no_view_dir' drops the view
    direction; 'no_normal' drops the normal. Directions are encoded with real spherical harmonics
    of degree ``sh_degree`` (0 = raw direction).
    """

    def __init__(
        self,
        feature_dim: int = 15,
        hidden_dim: int = 64,
        n_layers: int = 2,
        mode: str = "idr",
        sh_degree: int = 4,
        activation: str = "relu",
        weight_norm: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("idr", "no_view_dir", "no_normal"):
            raise ValueError(f"unknown colour mode {mode!r}; choose idr, no_view_dir or no_normal")
        self.mode, self.sh_degree = mode, sh_degree
        dir_dim = sh_degree**2 if sh_degree > 0 else 3
        in_dim = 3 + feature_dim + (dir_dim if mode != "no_view_dir" else 0) + (3 if mode != "no_normal" else 0)
        dims = [in_dim] + [hidden_dim] * n_layers + [3]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1])
            layers.append(nn.utils.parametrizations.weight_norm(lin) if weight_norm else lin)
            if i < len(dims) - 2:
                layers.append(make_activation(activation))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, normals: torch.Tensor, view_dirs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        parts = [x, features]
        if self.mode != "no_view_dir":
            parts.append(spherical_harmonics(view_dirs, self.sh_degree) if self.sh_degree > 0 else view_dirs)
        if self.mode != "no_normal":
            parts.append(normals)
        return torch.sigmoid(self.mlp(torch.cat(parts, dim=-1)))


class InverseVariance(nn.Module):
    """NeuS's learnable sharpness s = exp(10 * v) of the logistic density (Wang et al., NeurIPS 2021)."""

    def __init__(self, init_value: float = 0.3) -> None:
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self) -> torch.Tensor:
        return torch.exp(self.variance * 10.0)
