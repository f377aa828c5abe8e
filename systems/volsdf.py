"""VolSDF system: NeuS's training with VolSDF's Laplace-CDF density (Yariv et al., NeurIPS 2021)."""
from __future__ import annotations

from typing import Any

from models.volsdf import VolSDFModel
from systems.config import VolSDFConfig
from systems.neus import NeuSSystem


class VolSDFSystem(NeuSSystem):
    """Trains a :class:`VolSDFModel` as :class:`NeuSSystem` trains NeuS: the same losses (colour, eikonal, mask,
    curvature), adaptive ray count, visual hull and background field, beta in the ``variance`` parameter group
    (``system.optim.lr_variance``; logged as ``inv_s`` = 1/beta). No cosine annealing: VolSDF's opacity does
    not use the SDF's slope."""

    model: VolSDFModel

    def __init__(self, model: VolSDFModel, *args: Any, cos_anneal_steps: int = VolSDFConfig.cos_anneal_steps, **kwargs: Any) -> None:
        super().__init__(model, *args, cos_anneal_steps=cos_anneal_steps, **kwargs)  # 0: VolSDFConfig refuses another value
