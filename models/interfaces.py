"""The interfaces the systems and fields rely on, as ``typing.Protocol``s: an encoder (and the optional parts it
may offer), a camera rig and a step hook. Runtime-checkable where code has to tell them apart with ``isinstance``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Encoder(Protocol):
    """Maps points in the normalised frame (N, 3) to features (N, out_dim) whose first three columns are the raw
    coordinates (so a field's geometric initialisation holds)."""

    out_dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class JacobianEncoder(Encoder, Protocol):
    """An encoder that can return its exact Jacobian with its output; ``has_jacobian`` is False where a back end
    cannot (the tiny-cuda-nn hash grid), and then fields differentiate the encoder with autograd."""

    has_jacobian: bool

    def forward_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, 3) -> (encoding (N, D), its Jacobian w.r.t. x (N, D, 3))``."""
        ...


@runtime_checkable
class LevelledEncoder(Encoder, Protocol):
    """A multi-level grid encoder over [-bound, bound]^3 whose finest active level sets the finite-difference step."""

    bound: float

    @property
    def finest_active_resolution(self) -> float: ...


@runtime_checkable
class StepHook(Protocol):
    """A part of a system (the system itself, an encoder, a model) that sets itself for the training step before
    every step: walked by :class:`systems.callbacks.StepSchedules` with the system's schedule step."""

    def update_step(self, epoch: int, step: int) -> None: ...


class CameraRig(Protocol):
    """The cameras of a scene: view ids (B,) -> intrinsics (B, 3, 3) and camera-to-world poses (B, 4, 4) in the
    normalised frame (:class:`models.cameras.FixedCameras`, ``TrainableCameras``, ``MovingObjectCameras``)."""

    def __call__(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def jacobian_of(encoder: Encoder) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """The encoder's ``forward_with_jacobian`` when it has a working one (:class:`JacobianEncoder`), else None."""
    return encoder.forward_with_jacobian if isinstance(encoder, JacobianEncoder) and encoder.has_jacobian else None
