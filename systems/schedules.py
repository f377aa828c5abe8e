"""Scalar schedules for loss weights and other hyper-parameters, and the clock that stretches every
step schedule to the length of a time-budgeted run."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from systems.config import Optim


def scheduled(spec: float | Mapping | Sequence, step: int) -> float:
    """Value of ``spec`` at ``step``: a constant; a mapping
    ``{start: a, end: b, start_step: s0, end_step: s1, kind: linear|exp}`` that holds ``a`` before
    s0, ``b`` after s1 and interpolates in between (geometrically for ``exp``); or a list of these
    whose values multiply, e.g. a linear warm-up times an exponential decay (Neuralangelo's
    curvature weight)."""
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return math.prod(scheduled(s, step) for s in spec)
    if not isinstance(spec, Mapping):
        return float(spec)
    a, b = float(spec["start"]), float(spec["end"])
    s0, s1 = int(spec.get("start_step", 0)), int(spec["end_step"])
    p = min(max((step - s0) / max(s1 - s0, 1), 0.0), 1.0)
    if spec.get("kind", "linear") == "exp":
        return a * (b / a) ** p
    return a + (b - a) * p


def decay_factor(step: int, warmup: int, horizon: int, ratio: float, hold: bool = True) -> float:
    """Learning-rate factor at ``step``: a linear warm-up over ``warmup`` steps, then an exponential
    decay that reaches ``ratio`` at step ``horizon``; past it the factor stays at ``ratio`` (``hold``)
    or keeps decaying at the same rate."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(horizon - warmup, 1)
    done = step - warmup if not hold else min(step - warmup, span)
    return ratio ** (done / span)


def warmup_decay(optimizer: torch.optim.Optimizer, optim: Optim, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule of every parameter group (``system.scheduler``'s default), a factor of
    its rate per step: :func:`decay_factor` with ``optim.warmup_steps`` and a horizon of ``optim.decay_steps``
    (None: ``max_steps``). The group named ``camera`` waits ``camera_warmup_steps`` steps (the scene
    settles first), ramps up as long, reaches ``final_lr_ratio`` by ``camera_decay_steps`` at the latest
    and keeps decaying past it (long runs drift when it stays high late: docs/BENCHMARKS.md). The group named
    ``motion`` (a sequence frame's rigid motion, fitted in a short phase of its own) has no warm-up."""
    warmup, ratio, camera_warmup = optim.warmup_steps, optim.final_lr_ratio, optim.camera_warmup_steps
    horizon = optim.decay_steps or max(max_steps, warmup + 1)
    camera_horizon = min(horizon, optim.camera_decay_steps or horizon)

    def factor(step: int) -> float:
        return decay_factor(step, warmup, horizon, ratio)

    def camera_factor(step: int) -> float:
        ramp = min(max(step - camera_warmup, 0) / max(camera_warmup, 1), 1.0) if camera_warmup else 1.0
        return ramp * decay_factor(step, warmup, camera_horizon, ratio, hold=False)

    def motion_factor(step: int) -> float:
        return decay_factor(step, 0, horizon, ratio)

    special = {"camera": camera_factor, "motion": motion_factor}
    lambdas = [special.get(group.get("name"), factor) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


@dataclass
class ScheduleClock:
    """Maps training steps to the steps every schedule is written in (loss weights, learning rates,
    ``update_step`` hooks: encoder levels, NeuS's annealing, grid updates, IDR's mask sharpness).

    Unplanned (``planned_steps`` None), the two are the same: a run with an explicit
    ``trainer.max_steps`` keeps its schedules as written. A time-budgeted run plans its length
    (:class:`systems.callbacks.TimeBudget`) and the clock stretches the schedules, written for
    ``reference_steps``, to it: from the step it was planned at (``anchor_step``, where the clock
    read ``anchor_value``) it advances linearly to ``reference_steps`` at ``planned_steps``. A new
    plan re-anchors at the current reading, so the clock never jumps or runs backwards.
    """

    reference_steps: int | None = None  # the length schedules are written for; None: trainer.max_steps
    planned_steps: int | None = None
    anchor_step: int = 0
    anchor_value: float = 0.0

    def value(self, step: int) -> float:
        """The schedule position of training step ``step``, unrounded."""
        if self.planned_steps is None or self.reference_steps is None:
            return float(step)
        rate = max(self.reference_steps - self.anchor_value, 0.0) / max(self.planned_steps - self.anchor_step, 1)
        return self.anchor_value + (step - self.anchor_step) * rate

    def __call__(self, step: int) -> int:
        """The schedule step of training step ``step``."""
        return int(round(self.value(step)))

    def plan(self, step: int, planned_steps: int) -> None:
        """Stretch the schedules so that they end at training step ``planned_steps``, from ``step`` on."""
        self.anchor_value, self.anchor_step = self.value(step), step
        self.planned_steps = max(planned_steps, step + 1)
