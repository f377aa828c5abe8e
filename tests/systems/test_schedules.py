"""Loss-weight and learning-rate schedules."""
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from datasets.npz import load_npz_scene
from launch import compose_config
from systems.base import BaseSystem
from systems.config import Optim
from systems.schedules import decay_factor, scheduled, warmup_decay


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
    optimizer = torch.optim.Adam([{"name": "encoder", "params": [scene], "lr": 1.0}, {"name": "camera", "params": [camera], "lr": 1.0}])
    optim = Optim(warmup_steps=100, decay_steps=None, final_lr_ratio=0.1, camera_warmup_steps=50, camera_decay_steps=3000)
    schedule = warmup_decay(optimizer, optim, max_steps=6000)
    scene_rate, camera_rate = (schedule.lr_lambdas[i] for i in range(2))
    assert camera_rate(50) == 0.0 and camera_rate(75) == pytest.approx(0.5 * 0.76)
    assert scene_rate(3000) == pytest.approx(0.1 ** (2900 / 5900)) and camera_rate(3000) == pytest.approx(0.1)
    assert scene_rate(6000) == pytest.approx(0.1) and camera_rate(5900) == pytest.approx(0.01)


# Every group's learning rate at steps 0, 100 and 1000 of a default 1500-step run, as the optimiser and scheduler
# were hard-coded in BaseSystem.configure_optimizers before they became config nodes (Adam, betas (0.9, 0.99)).
NEUS_RATES = {0: 1e-4, 100: 0.01, 1000: 0.0022758459260747883}
NEUS_CAMERA = {0: 0.0, 100: 0.0015, 1000: 0.00034137688891121824}
IDR_RATES = {0: 5e-4, 100: 0.0004288479492954471, 1000: 0.0001077217345015942}
IDR_CAMERA = {0: 0.0, 100: 0.0012865438478863412, 1000: 0.0003231652035047826}


@pytest.mark.parametrize("system, eps, rates, camera_rates", [("neus", 1e-15, NEUS_RATES, NEUS_CAMERA), ("idr", 1e-8, IDR_RATES, IDR_CAMERA)])
def test_optimiser_and_scheduler_from_config_keep_the_learning_rates(system, eps, rates, camera_rates, small_synthetic):
    cfg = compose_config([f"system={system}", "encoder=frequency", "camera=trainable"])
    scene = load_npz_scene(str(small_synthetic))
    cameras = instantiate(cfg.camera, intrinsics=scene.intrinsics, c2w=scene.c2w)
    built = instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(scene=scene, cameras=cameras)
    built.trainer = SimpleNamespace(max_steps=1500)
    setup = BaseSystem.configure_optimizers(built)
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert type(optimizer) is torch.optim.Adam and tuple(optimizer.defaults["betas"]) == (0.9, 0.99) and optimizer.defaults["eps"] == eps
    names = [g["name"] for g in optimizer.param_groups]
    assert "camera" in names and "texture" in names
    for step, rate in rates.items():
        lrs = [base * factor(step) for base, factor in zip(schedule.base_lrs, schedule.lr_lambdas)]
        expected = [camera_rates[step] if name == "camera" else rate for name in names]
        assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15), (step, names)


def test_another_optimiser_from_the_command_line():
    cfg = compose_config(["system.optimizer._target_=torch.optim.AdamW", "+system.optimizer.weight_decay=0.05"])
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = instantiate(cfg.system.optimizer, _convert_="object")([{"params": [parameter], "lr": 0.1}])
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.05
