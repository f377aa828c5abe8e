"""Loss-weight and learning-rate schedules."""
from types import SimpleNamespace

import pytest
import torch

from systems.base import BaseSystem
from systems.config import Optim
from systems.schedules import decay_factor, scheduled


def test_constants_ramps_and_products_of_schedules():
    assert scheduled(0.3, 7) == 0.3
    assert scheduled({"start": 1.0, "end": 0.0, "end_step": 10}, 5) == 0.5
    assert scheduled({"start": 1.0, "end": 0.01, "start_step": 10, "end_step": 30, "kind": "exp"}, 20) == pytest.approx(0.1)
    warm_then_decay = [{"start": 0.0, "end": 5e-4, "end_step": 100},
                       {"start": 1.0, "end": 0.1, "start_step": 100, "end_step": 300, "kind": "exp"}]
    values = [scheduled(warm_then_decay, s) for s in (0, 50, 100, 200, 300, 1000)]
    assert values == pytest.approx([0.0, 2.5e-4, 5e-4, 5e-4 * 0.1**0.5, 5e-5, 5e-5])


def test_learning_rate_decay_holds_or_decays_on_past_its_horizon():
    assert [decay_factor(s, 100, 1100, 0.1) for s in (0, 49, 100, 600, 1100, 5000)] == pytest.approx(
        [0.01, 0.5, 1.0, 0.1**0.5, 0.1, 0.1])
    # The camera rate: the same up to its horizon, then on down at the same rate (0.01 one span later).
    assert [decay_factor(s, 100, 1100, 0.1, hold=False) for s in (600, 1100, 2100)] == pytest.approx([0.1**0.5, 0.1, 0.01])
    assert decay_factor(0, 0, 1000, 0.1) == 1.0


def test_camera_rate_reaches_the_final_ratio_by_camera_decay_steps_and_decays_on():
    """A 6000-step run: the scene's rate decays over the whole run, the cameras' over the first 3000
    steps (after their own warm-up ramp), then on at the same rate."""
    scene, camera = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    fake = SimpleNamespace(
        param_groups=lambda: [{"name": "encoder", "params": [scene], "lr": 1.0}, {"name": "camera", "params": [camera], "lr": 1.0}],
        optim=Optim(warmup_steps=100, decay_steps=None, final_lr_ratio=0.1, camera_warmup_steps=50, camera_decay_steps=3000),
        trainer=SimpleNamespace(max_steps=6000))
    schedule = BaseSystem.configure_optimizers(fake)["lr_scheduler"]["scheduler"]
    scene_rate, camera_rate = (schedule.lr_lambdas[i] for i in range(2))
    assert camera_rate(50) == 0.0 and camera_rate(75) == pytest.approx(0.5 * 0.76)
    assert scene_rate(3000) == pytest.approx(0.1 ** (2900 / 5900)) and camera_rate(3000) == pytest.approx(0.1)
    assert scene_rate(6000) == pytest.approx(0.1) and camera_rate(5900) == pytest.approx(0.01)
