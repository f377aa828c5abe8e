"""VolSDF system: a few training steps on a small synthetic scene lower the colour error and sharpen beta; one
tiny run of launch.py system=volsdf end to end."""
import json

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from datasets.npz import load_npz_scene
from launch import compose_config
from models.cameras import FixedCameras
from models.volsdf import VolSDFModel
from systems.volsdf import VolSDFSystem


def test_training_steps_lower_the_loss_and_beta(small_synthetic, monkeypatch):
    """Ten steps with the system's own optimiser and warm-up: the loss and the colour error of a fixed batch fall,
    beta narrows."""
    cfg = compose_config(["system=volsdf", "encoder=frequency", "system.model.grid.resolution=16", "system.model.samples_per_ray=128",
                          "system.rays.initial=128", "system.rays.target_samples=2048", "system.loss.eikonal_points=64"])
    torch.manual_seed(0)
    scene = load_npz_scene(str(small_synthetic))
    system = instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(
        scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))
    assert isinstance(system, VolSDFSystem) and isinstance(system.model, VolSDFModel)
    assert system.cos_anneal_ratio() == 1.0 and "variance" in [g["name"] for g in system.param_groups()]
    monkeypatch.setattr("systems.neus.log_scalars", lambda module, values, prog_bar=(): None)
    system.on_fit_start()  # carves the visual hull
    assert system.model.grid.hull.float().mean() < 0.8

    torch.manual_seed(1)
    rays, target, _, bg = system.sample_rays(512)  # a fixed batch to measure the colour error on

    def colour_error() -> float:
        with torch.no_grad():
            return float(F.l1_loss(system.model.render(rays, bg)["rgb"], target))

    before, beta_before = colour_error(), float(system.model.beta())
    assert abs(beta_before - 0.1) < 1e-6
    optimiser = system.make_optimizer([g for g in system.param_groups() if g["params"]])
    scheduler = system.make_scheduler(optimiser, system.optim, 1500)
    losses = []
    for _ in range(10):
        system.on_train_batch_start(None, 0)  # the occupancy-grid update
        loss = system.training_step(None, 0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(float(loss))
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses
    assert colour_error() < 0.8 * before
    assert float(system.model.beta()) < 0.99 * beta_before


@pytest.mark.slow
def test_launch_trains_volsdf(launch, tiny, tmp_path):
    run_dir = tmp_path / "run"
    result = launch(*tiny, "system=volsdf", f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["chamfer"] > 0 and metrics["psnr"] > 0
    assert (run_dir / "meshes" / "final.ply").stat().st_size > 0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert "model.variance.variance" in checkpoint["state_dict"]
