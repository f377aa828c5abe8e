"""NeuS system: loss weights, the curvature loss, training without masks (background field), and a short CPU run on a
small synthetic scene beating the initial sphere."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from datasets.npz import load_npz_scene
from datasets.synthetic import scene_sdf
from models.cameras import FixedCameras, TrainableCameras
from models.encoders import FrequencyEncoder
from models.fields import SDFField
from models.samplers import OccupancyGrid
from launch import compose_config
from systems.base import curvature_loss

SMALL = [
    "dataset.n_views=16", "dataset.width=96", "dataset.height=72", "dataset.test_every=8",
    "trainer.val_check_interval=1000", "trainer.checkpoint_every_n_steps=1000",
    "export.resolution=64", "eval.chamfer_points=20000", "system.rays.target_samples=8192",
    "trainer.max_time=00:01:00:00",  # bound by steps, not the 9-minute default, on a busy machine too
]


@pytest.mark.slow
def test_short_run_halves_the_chamfer_of_the_initial_sphere(launch, tmp_path):
    data = tmp_path / "data"
    chamfer = {}
    for steps in (1, 300):
        run_dir = tmp_path / f"run{steps}"
        result = launch(*SMALL, f"trainer.max_steps={steps}", f"data_dir={data}", f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
        chamfer[steps] = json.loads((run_dir / "metrics.json").read_text())["chamfer"]
    assert chamfer[300] < 0.5 * chamfer[1], chamfer


def make_neus(scene_dir: Path, overrides: tuple[str, ...] = (), cameras: nn.Module | None = None, use_masks: bool = True):
    cfg = compose_config(["system=neus", "encoder=frequency", "system.model.grid.resolution=16", *overrides])
    torch.manual_seed(0)
    scene = load_npz_scene(str(scene_dir), use_masks=use_masks)
    cameras = FixedCameras(scene.intrinsics, scene.c2w) if cameras is None else cameras
    return instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(scene=scene, cameras=cameras)


def surface_cells(grid: OccupancyGrid) -> torch.Tensor:
    """Cells (flat, bool) holding ground-truth surface of the synthetic scene: |sdf(centre)| below half a cell."""
    return scene_sdf(grid.cell_centers()).abs() < grid.cell_size / 2


def test_trainable_cameras_carve_a_wider_hull_from_their_starting_poses(small_synthetic):
    scene = load_npz_scene(str(small_synthetic))
    noisy = TrainableCameras(scene.intrinsics, scene.c2w, noise={"rotation_deg": 3.0, "translation": 0.02, "seed": 0})
    grid = ("system.model.grid.resolution=48",)
    # Carved from the noisy starting poses without a margin, the hull cuts into the object ...
    tight = make_neus(small_synthetic, (*grid, "system.visual_hull.dilation=0", "system.visual_hull.trainable_margin_deg=0"), noisy)
    tight.on_fit_start()
    assert not tight.model.grid.hull.view(-1)[surface_cells(tight.model.grid)].all()
    # ... with the default margin (4 degrees for 3 degrees of noise) it keeps every surface cell and still carves.
    wide = make_neus(small_synthetic, grid, noisy)
    assert wide.hull_cfg.trainable_margin_deg == 4.0
    wide.on_fit_start()
    hull = wide.model.grid.hull.view(-1)
    assert hull[surface_cells(wide.model.grid)].all() and hull.float().mean() < 0.8
    off = make_neus(small_synthetic, (*grid, "system.visual_hull.trainable_margin_deg=null"), noisy)
    off.on_fit_start()
    assert off.model.grid.hull.all()


def test_curvature_loss_is_the_mean_absolute_laplacian_and_can_be_minimised():
    assert float(curvature_loss(torch.tensor([1.0, -3.0, 2.0]))) == 2.0
    assert float(curvature_loss(torch.zeros(0))) == 0.0
    torch.manual_seed(0)
    field = SDFField(FrequencyEncoder(4), hidden_dim=32, n_layers=2, grad_type="finite_difference", fd_step=0.01)
    optimiser = torch.optim.Adam(field.parameters(), lr=1e-3)
    x = torch.rand(512, 3) * 1.6 - 0.8
    history = []
    for _ in range(20):
        loss = curvature_loss(field.forward_with_derivatives(x, create_graph=True, laplacian=True)[3])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(float(loss))
    assert history[-1] < 0.7 * history[0]


@pytest.mark.parametrize("grad_type, grid", [("analytic", "true"), ("finite_difference", "true"), ("analytic", "false")])
def test_training_step_weighs_the_curvature_loss(small_synthetic, monkeypatch, grad_type, grid):
    system = make_neus(small_synthetic, (f"system.model.geometry.grad_type={grad_type}", f"system.model.grid.enabled={grid}",
                                         "system.loss.curvature=0.5", "system.rays.initial=64", "system.loss.eikonal_points=64"))
    assert system.model.geometry.grad_type == grad_type and isinstance(system.model.grid, OccupancyGrid)
    logged = {}
    monkeypatch.setattr("systems.neus.log_scalars", lambda module, values, prog_bar=(): logged.update(values))
    system.on_fit_start()  # carves the visual hull unless the grid is off
    assert system.model.grid.hull.all() == (grid == "false")
    total = system.training_step(None, 0)
    weights = {"rgb_l1": 1.0, "eikonal": 0.1, "mask": 0.1, "curvature": 0.5}
    assert set(weights) <= set(logged) and float(logged["curvature"]) > 0
    torch.testing.assert_close(total, sum(w * logged[k] for k, w in weights.items()))
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in system.model.geometry.parameters() if p.grad is not None)
    # Without a curvature weight no Laplacian is computed.
    logged.clear()
    system.loss_cfg.curvature = 0.0
    system.training_step(None, 0)
    assert "curvature" not in logged


def test_a_loaded_run_renders_with_the_annealing_it_was_trained_to(small_synthetic):
    """The step counter of a run loaded for mode=test is 0: evaluation must not undo the cosine annealing."""
    system = make_neus(small_synthetic)
    assert system.cos_anneal_steps == 200 and system.global_step == 0
    assert system.train().cos_anneal_ratio() == 0.0
    assert system.eval().cos_anneal_ratio() == 1.0


def test_step_schedules_set_the_annealing_levels_and_grid_for_the_step(small_synthetic):
    """One mechanism (StepSchedules, attached by the system itself) sets every step-driven part: NeuS's
    annealing, the encoder's coarse-to-fine window, the occupancy grid's refresh."""
    from systems.callbacks import StepSchedules

    system = make_neus(small_synthetic, ("encoder.window_end=320",))
    (callback,) = system.configure_callbacks()
    assert isinstance(callback, StepSchedules)
    encoder, grid = system.model.geometry.encoder, system.model.grid
    before = grid.values.clone()
    callback.on_train_batch_start(SimpleNamespace(current_epoch=0, global_step=160), system.train(), None, 0)
    assert system.cos_anneal_ratio() == 160 / 200
    assert encoder.window[0] == 1 and encoder.window[-1] == 0  # BARF's window half open at 160 of 320 steps
    assert not torch.equal(grid.values, before)  # the grid refreshes every 16 steps


@pytest.mark.parametrize("use_masks, background", [(False, "black"), (True, "nerf")])
def test_training_with_the_background_field(small_synthetic, monkeypatch, caplog, use_masks, background):
    """Without masks a constant background becomes the field (one log line), with no mask loss and no hull; with
    masks and background=nerf the mask loss and hull stay. Either way the target is the raw image and the field learns."""
    caplog.set_level("INFO", logger="systems.base")
    system = make_neus(small_synthetic, (f"system.background={background}", "system.rays.initial=64", "system.loss.eikonal_points=64",
                                         "system.background_field.n_samples=8", "system.eval_downscale=4"), use_masks=use_masks)
    assert system.background_mode == "nerf" and system.background_field.n_samples == 8
    assert ("system.background=black -> nerf" in caplog.text) != use_masks
    assert [g["name"] for g in system.param_groups()][-2:] == ["background", "variance"]
    logged = {}
    monkeypatch.setattr("systems.neus.log_scalars", lambda module, values, prog_bar=(): logged.update(values))
    system.on_fit_start()
    assert bool(system.model.grid.hull.all()) != use_masks  # carved from the masks only when training with them
    rays, target, mask, bg = system.sample_rays(32)
    assert (mask is not None) == use_masks and bg.shape == (32, 3)
    total = system.training_step(None, 0)
    weights = {"rgb_l1": 1.0, "eikonal": 0.1, **({"mask": 0.1} if use_masks else {})}
    assert ("mask" in logged) == use_masks
    torch.testing.assert_close(total, sum(w * logged[k] for k, w in weights.items()))
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in system.background_field.parameters())
    assert system.background_field.color_out.weight.grad.abs().sum() > 0
    # Held-out metrics still use the held-out masks: PSNR on the object, IoU of the foreground opacity.
    metrics, out = system.eval().evaluate_view(0)
    assert set(metrics) == {"psnr", "iou"} and 0.0 <= metrics["iou"] <= 1.0 and out["rgb"].shape == (12, 16, 3)


def test_a_scene_without_masks_keeps_a_learned_background(small_synthetic):
    """Only the constant colours are replaced by the field; ``learned`` is a choice the user made for such scenes."""
    system = make_neus(small_synthetic, ("system.background=learned",), use_masks=False)
    assert system.background_mode == "learned" and system.background_field is None
    assert make_neus(small_synthetic, use_masks=True).background_field is None


@pytest.mark.slow
def test_launch_trains_without_masks(launch, tiny, tmp_path):
    """dataset.use_masks=false system.background=nerf end to end: the field is trained and saved, held-out IoU is
    measured against the masks training never saw."""
    run_dir = tmp_path / "run"
    result = launch(*tiny, f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}", "dataset.use_masks=false",
                    "system.background=nerf", "system.background_field.n_samples=8",
                    "system.eval_downscale=4")  # no hull without masks: the untrained grid is full, full-size renders are slow
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and 0.0 <= metrics["iou"] <= 1.0 and metrics["psnr"] > 0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(k.startswith("background_field.") for k in checkpoint["state_dict"])
    assert "background" in [g["name"] for g in checkpoint["optimizer_states"][0]["param_groups"]]
