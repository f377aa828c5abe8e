"""Optional tiny-cuda-nn backend (Mueller, "tiny-cuda-nn", 2021) for the hash-grid features.

``tinycudann`` is imported lazily and only when asked for, so nothing here needs it installed.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

BACKENDS = ("auto", "torch", "tcnn")
INSTALL_HINT = "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"


def import_tcnn() -> ModuleType | None:
    """The ``tinycudann`` module, or None when it cannot be imported."""
    try:
        import tinycudann
    except (ImportError, OSError):  # absent, or built against another CUDA/torch
        return None
    return tinycudann


def resolve_backend(backend: str) -> str:
    """'torch' or 'tcnn' for ``backend`` in auto | torch | tcnn.

    ``auto`` picks tcnn when tinycudann imports and CUDA is available (the trainer then runs on the
    GPU; tcnn modules can only be built there), the pure PyTorch path otherwise. ``tcnn`` without
    both raises ImportError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    available = torch.cuda.is_available() and import_tcnn() is not None
    if backend == "tcnn" and not available:
        missing = "CUDA" if import_tcnn() is not None else "tinycudann"
        raise ImportError(f"encoder.backend=tcnn needs {missing} ({INSTALL_HINT}); use encoder.backend=auto or torch")
    return "tcnn" if available else "torch"


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn's fused multiresolution hash grid: (N, 3) in [-bound, bound] -> (N, L F) float32.

    Level features only (no xyz, no level mask); the parameters live in tcnn's own flat ``params``
    tensor, so checkpoints of this backend do not load into the PyTorch one. Input gradients and
    the second derivatives of the eikonal loss go through tcnn's autograd functions.
    """

    def __init__(self, n_levels: int, n_features: int, log2_table_size: int, base_resolution: int,
                 per_level_scale: float, bound: float = 1.0) -> None:
        super().__init__()
        tcnn = import_tcnn()
        if tcnn is None:
            raise ImportError(f"tinycudann is not installed ({INSTALL_HINT})")
        self.bound = bound
        self.encoding = tcnn.Encoding(n_input_dims=3, encoding_config={
            "otype": "HashGrid", "n_levels": n_levels, "n_features_per_level": n_features,
            "log2_hashmap_size": log2_table_size, "base_resolution": base_resolution, "per_level_scale": per_level_scale,
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            raise ValueError("the tcnn encoder backend needs CUDA tensors; use encoder.backend=torch on the CPU")
        u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)  # tcnn expects [0, 1]^3
        return self.encoding(u).float()  # tcnn computes in float16
