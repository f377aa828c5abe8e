"""Time-budgeted training (systems.callbacks.TimeBudget) on a fake clock: the run plans as many steps as fit,
and every schedule (learning rate, encoder levels, annealing, loss weights) is stretched to end with it."""
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from datasets.npz import load_npz_scene
from launch import compose_config
from models.cameras import FixedCameras
from systems.callbacks import ScaledSchedules, TimeBudget
from systems.config import parse_duration
from systems.schedules import ScheduleClock


class FakeClock:
    """A clock that advances ``seconds_per_step`` with every training step (a callback ticks it)."""

    def __init__(self, seconds_per_step: float) -> None:
        self.now, self.seconds_per_step = 1000.0, seconds_per_step

    def __call__(self) -> float:
        return self.now


class Tick(pl.Callback):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.now += self.clock.seconds_per_step


def small_neus(scene_dir: Path):
    cfg = compose_config(["system.model.grid.resolution=16", "system.rays.initial=64", "system.rays.target_samples=1024",
                          "encoder.compile=false", "encoder.n_levels=6", "encoder.start_level=2", "encoder.steps_per_level=9",
                          "system.loss.eikonal_points=64", "system.optim.warmup_steps=10", "system.cos_anneal_steps=30"])
    torch.manual_seed(0)
    scene = load_npz_scene(str(scene_dir))
    return instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(
        scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))


def fit(system, budget: TimeBudget, clock: FakeClock) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=-1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False,
                         callbacks=[budget, Tick(clock)])
    trainer.fit(system)
    return trainer


def test_schedule_clock_is_the_identity_until_planned_then_stretches_without_jumps():
    clock = ScheduleClock(reference_steps=100)
    assert [clock(s) for s in (0, 7, 100, 250)] == [0, 7, 100, 250]  # an explicit max_steps: schedules as written
    clock.plan(10, 210)  # from step 10, the remaining 90 schedule steps over 200 training steps
    assert clock(10) == 10 and clock(110) == 55 and clock(210) == 100
    clock.plan(110, 160)  # a re-plan continues from the current reading, never backwards
    assert clock(110) == 55 and clock(160) == 100
    readings = [clock.value(s) for s in range(110, 200)]
    assert all(b >= a for a, b in zip(readings, readings[1:]))


def test_parse_duration():
    assert parse_duration("00:00:10:00") == 600 and parse_duration("01:30") == 90 and parse_duration("1:00:00:05") == 86405
    with pytest.raises(ValueError):
        parse_duration("1:2:3:4:5")


@pytest.mark.slow
def test_a_budget_is_spent_on_the_steps_that_fit_with_every_schedule_stretched_to_them(small_synthetic):
    """30 s at 0.5 s a step (1 % kept in reserve): about 59 steps, planned after 5; the schedules, written for 40
    steps, end with the run: every encoder level on, annealing done, the learning rate decayed to its final ratio."""
    system = small_neus(small_synthetic)
    clock = FakeClock(0.5)
    budget = TimeBudget(30.0, reference_steps=40, skip_steps=2, first_plan_step=5, clock=clock)
    trainer = fit(system, budget, clock)
    assert trainer.global_step == budget.planned
    assert budget.planned == pytest.approx(0.99 * 30 / 0.5, abs=2)
    assert system.clock.reference_steps == 40 and system.clock(trainer.global_step) == 40
    encoder = system.model.geometry.encoder
    assert int(encoder.n_active) == encoder.n_levels  # 2 + 36 // 9 levels by schedule step 36: all 6 ...
    assert system.schedule_step_of(trainer.global_step // 2) == pytest.approx(20, abs=2)  # ... half-way at half the run
    assert system.anneal == 1.0
    lrs = [g["lr"] / g["initial_lr"] for g in trainer.optimizers[0].param_groups if g["name"] == "geometry"]
    assert lrs == [pytest.approx(system.optim.final_lr_ratio, rel=0.05)]
    state = budget.state_dict()
    assert state["planned"] == budget.planned and state["spent_s"] == pytest.approx(0.5 * trainer.global_step)


@pytest.mark.slow
def test_a_resumed_budget_counts_the_time_already_spent(small_synthetic):
    """A run resumed with 20 of its 30 s spent plans only the steps that fit in the 10 s left."""
    system = small_neus(small_synthetic)
    clock = FakeClock(0.5)
    budget = TimeBudget(30.0, reference_steps=40, skip_steps=2, first_plan_step=5, clock=clock)
    budget.load_state_dict({"spent_s": 20.0, "planned": None})
    trainer = fit(system, budget, clock)
    assert trainer.global_step == pytest.approx((0.99 * 30 - 20) / 0.5, abs=2)


def test_scaled_schedules_stretch_an_explicit_step_count_as_a_budget_would(small_synthetic):
    """trainer.scale_schedules: 24 steps with schedules written for 40 end them all at step 24."""
    system = small_neus(small_synthetic)
    trainer = pl.Trainer(max_steps=24, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, inference_mode=False,
                         callbacks=[ScaledSchedules(24, reference_steps=40)])
    trainer.fit(system)
    assert trainer.global_step == 24 and system.clock(24) == 40 and system.schedule_step_of(12) == 20
    encoder = system.model.geometry.encoder
    assert int(encoder.n_active) == encoder.n_levels and system.anneal == 1.0
    lrs = [g["lr"] / g["initial_lr"] for g in trainer.optimizers[0].param_groups if g["name"] == "geometry"]
    assert lrs == [pytest.approx(system.optim.final_lr_ratio, rel=0.05)]


@pytest.mark.parametrize("overrides, max_steps, budget_s", [
    ([], 1500, None),                                                   # neither: the length schedules are written for
    (["trainer.max_steps=7"], 7, None),                                 # steps: as written
    (["trainer.max_steps=7", "trainer.max_time=00:00:05:00"], 7, None),  # steps, capped by the clock
    (["trainer.max_time=00:00:05:00"], -1, 300.0),                      # a budget: TimeBudget plans the steps
    (["trainer.max_time=00:00:05:00", "trainer.schedule_steps=900"], -1, 300.0),
    (["trainer.max_steps=7", "trainer.scale_schedules=true"], 7, None),  # steps, schedules stretched to them
])
def test_the_trainer_gets_a_budget_only_from_max_time_alone(tmp_path, overrides, max_steps, budget_s):
    from systems.assembly import build_trainer

    cfg = compose_config(["callbacks.lr_monitor=null", *overrides])
    trainer = build_trainer(cfg, tmp_path, [])
    budgets = [c for c in trainer.callbacks if isinstance(c, TimeBudget)]
    assert trainer.max_steps == max_steps
    assert [b.budget_s for b in budgets] == ([budget_s] if budget_s else [])
    assert all(b.reference_steps == cfg.trainer.schedule_steps for b in budgets)
    scaled = [c.max_steps for c in trainer.callbacks if isinstance(c, ScaledSchedules)]
    assert scaled == ([7] if cfg.trainer.scale_schedules else [])
