"""Coarse-to-fine level activation shared by the multi-level encoders (hash grid, NFFB, style-modulated NFFB)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ProgressiveLevels(nn.Module):
    """Base of encoders made of ``len(resolutions)`` levels, coarsest first, activated coarse to fine.

    Schedule of Neuralangelo (Li et al., CVPR 2023) and instant-nsr-pl: ``start_level`` levels are
    active at step 0 and one more every ``steps_per_level`` steps (0: all levels from the start).
    Subclasses multiply each level's output by ``level_mask``, so inactive levels output zero and
    receive no gradient while every shape stays static (``torch.compile`` does not recompile as
    levels switch on). The active count is the persistent buffer ``n_active``: it is saved in
    checkpoints and restored on resume.
    """

    def __init__(self, resolutions: Sequence[float], start_level: int | None = None, steps_per_level: int = 0) -> None:
        super().__init__()
        self.n_levels = len(resolutions)
        self.start_level = self.n_levels if start_level is None else max(1, min(start_level, self.n_levels))
        self.steps_per_level = steps_per_level
        self.register_buffer("resolutions", torch.tensor(list(resolutions), dtype=torch.float32), persistent=False)
        self.register_buffer("n_active", torch.tensor(self.start_level, dtype=torch.int64))

    @property
    def level_mask(self) -> torch.Tensor:
        """(L,) 1 for active levels, 0 for inactive ones (dtype of the module's floats)."""
        return (torch.arange(self.n_levels, device=self.n_active.device) < self.n_active).to(self.resolutions.dtype)

    def set_active_levels(self, n: int) -> None:
        self.n_active.fill_(max(1, min(int(n), self.n_levels)))

    def update_step(self, epoch: int, step: int) -> None:
        """Activate levels coarse to fine with the training step."""
        if self.steps_per_level > 0:
            self.set_active_levels(self.start_level + step // self.steps_per_level)

    def compile_jacobian(self, compile: bool) -> None:
        """With ``compile``, the subclass's Jacobian path ``_encode_with_jacobian`` runs through ``torch.compile``
        (dynamic shapes) for inputs that need no gradient. Inputs that do (trainable cameras, a sequence's
        object motion) take the eager path: there the compiled graph was 3-7x slower than eager on the CPU
        (docs/BENCHMARKS.md, Dynamic scenes)."""
        self._compiled_jacobian = torch.compile(self._encode_with_jacobian, dynamic=True) if compile else None

    def _jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, 3) -> (encoding (N, D), Jacobian (N, D, 3))``, compiled or eager (:meth:`compile_jacobian`)."""
        if self._compiled_jacobian is not None and not x.requires_grad:
            return self._compiled_jacobian(x)
        return self._encode_with_jacobian(x)

    @property
    def finest_active_resolution(self) -> float:
        """Grid cells per axis (across the whole [-bound, bound] cube) of the finest active level."""
        return float(self.resolutions[int(self.n_active) - 1])
