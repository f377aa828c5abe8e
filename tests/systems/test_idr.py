"""IDR system: configs, losses, inspection images, appearance transfer and an end-to-end run."""
from __future__ import annotations

import json
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from core.errors import InputError
from core.geometry import image_rays, intersect_sphere
from core.geometry import look_at
from datasets.scene import Scene
from launch import compose_config
from models.cameras import FixedCameras
from systems.video import orbit_path
from systems.visual_checks import inspect_init, transfer
H, W = 24, 32


def toy_scene(n_views: int = 3, masks: bool = True) -> Scene:
    """Views of a sphere of radius 0.4 from a ring of cameras at distance 3 (z up); grey object on black."""
    focal = 1.2 * W
    k = torch.tensor([[focal, 0.0, W / 2], [0.0, focal, H / 2], [0.0, 0.0, 1.0]])
    angles = torch.arange(n_views) * 2 * torch.pi / n_views
    up = torch.tensor([0.0, 0.0, 1.0])
    c2w = torch.stack([look_at(torch.stack([3 * a.cos(), 3 * a.sin(), torch.tensor(0.6)]), up) for a in angles])
    hit = torch.stack([intersect_sphere(r.origins, r.directions, 0.4)[2] for r in (image_rays(k, m, H, W) for m in c2w)])
    mask = hit.float().reshape(n_views, H, W)
    return Scene(images=mask[..., None].expand(-1, -1, -1, 3) * 0.6, masks=mask if masks else None,
                 intrinsics=k.expand(n_views, 3, 3).clone(), c2w=c2w, scale_mat=np.eye(4),
                 train_ids=list(range(n_views)), test_ids=[], root="", name="toy")


def make_system(system: str = "idr", seed: int = 0, masks: bool = True, overrides: tuple[str, ...] = ()):
    cfg = compose_config([f"system={system}", "encoder=frequency", *overrides])
    torch.manual_seed(seed)
    scene = toy_scene(masks=masks)
    cameras = FixedCameras(scene.intrinsics, scene.c2w)
    return instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(scene=scene, cameras=cameras)


def test_paper_config_builds_the_paper_networks():
    system = make_system("idr_paper")
    geometry = system.model.geometry
    assert len(geometry.layers) == 9 and geometry.skip_layer == 4 and geometry.feature_dim == 256
    assert geometry.encoder.n_frequencies == 6
    assert sum(isinstance(m, torch.nn.Linear) for m in system.model.texture.modules()) == 5
    assert system.n_rays == 2048


def test_alpha_schedule():
    system = make_system()
    assert [system.alpha(s) for s in (0, 249, 250, 500, 10_000)] == [50.0, 50.0, 100.0, 200.0, 1600.0]


def test_training_step():
    system = make_system(overrides=("system.n_rays=256", "system.loss.eikonal_points=64"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = system.training_step(None, 0)
    assert torch.isfinite(loss)
    loss.backward()
    geometry_grad = sum(p.grad.abs().sum() for p in system.model.geometry.parameters() if p.grad is not None)
    texture_grad = sum(p.grad.abs().sum() for p in system.model.texture.parameters() if p.grad is not None)
    assert geometry_grad > 0 and texture_grad > 0
    names = [g["name"] for g in system.param_groups()]
    assert names == ["encoder", "geometry", "texture", "camera", "other"]


def test_idr_refuses_training_without_masks_and_the_background_field():
    with pytest.raises(InputError, match="^: the scene has no masks, but IDR needs masks .*use system=neus"):
        make_system(masks=False)
    cfg = compose_config(["system=idr", "encoder=frequency"])
    scene = toy_scene()
    scene.use_masks = False
    build = instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)
    with pytest.raises(InputError, match="^dataset.use_masks: false, but IDR needs masks"):
        build(scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))
    with pytest.raises(InputError, match="^system.background: nerf .* is for NeuS"):
        make_system(overrides=("system.background=nerf",))


@pytest.mark.parametrize("system_name", ["idr", "neus"])
def test_inspect_init_writes_images(tmp_path, system_name):
    system = make_system(system_name)
    paths = inspect_init(system, tmp_path, resolution=64)
    assert [p.name for p in paths] == ["sdf_slice.png", "init_render.png"]
    slices = iio.imread(paths[0])
    assert slices.shape == (64, 3 * 64 + 8, 3)
    z_slice = slices[:, -64:].astype(int)
    contour = (z_slice.sum(-1) == 0)
    assert 100 < contour.sum() < 600  # the zero level set of the initial sphere (radius 0.5)
    rows, cols = np.nonzero(contour)
    radius = np.hypot(rows - 31.5, cols - 31.5) * 2 / 63
    assert abs(np.median(radius) - 0.5) < 0.1
    assert z_slice[32, 32, 2] > z_slice[32, 32, 0] and z_slice[0, 0, 0] > z_slice[0, 0, 2]  # blue inside, red outside
    render = iio.imread(paths[1])
    assert render.shape == (H, W, 3)
    assert render[H // 2, W // 2].mean() > 100 and (render[0, 0] == 26).all()  # lit sphere on dark grey


def test_orbit_path_circles_the_cameras():
    scene = toy_scene(n_views=6)
    path = orbit_path(scene.c2w, 8)
    centres = path[:, :3, 3]
    torch.testing.assert_close(centres.norm(dim=-1), scene.c2w[:, :3, 3].norm(dim=-1).mean().expand(8))
    torch.testing.assert_close(path[:, :3, 2], -torch.nn.functional.normalize(centres, dim=-1))
    torch.testing.assert_close(path[:, :3, :3].transpose(1, 2) @ path[:, :3, :3], torch.eye(3).expand(8, 3, 3), atol=1e-5, rtol=0)
    azimuth = torch.atan2(centres[:, 1], centres[:, 0])
    assert azimuth.max() - azimuth.min() > 1.5 * torch.pi  # once round
    arc = orbit_path(scene.c2w[:2], 8)  # two cameras 60 degrees apart: sweep between them
    arc_azimuth = torch.atan2(arc[:, 1, 3], arc[:, 0, 3])
    assert arc_azimuth.min() > -0.01 and arc_azimuth.max() < torch.pi / 3 + 0.01


def test_transfer_writes_frames_and_video(tmp_path):
    geometry, appearance = make_system(seed=0), make_system(seed=1)
    video = transfer(geometry, appearance, tmp_path, n_frames=4, fps=5, resolution=32)
    assert video.suffix == ".mp4" and video.stat().st_size > 0
    frames = [iio.imread(p) for p in sorted((tmp_path / "frames").glob("*.png"))]
    assert len(frames) == 4 and frames[0].shape == (H, W, 3)
    assert frames[0].max() > 50  # the sphere is in view
    assert len(iio.imread(video, index=None)) == 4


def test_transfer_renders_neus_runs_with_their_own_renderer(tmp_path):
    """NeuS has no sphere tracer: its geometry is volume rendered with the other run's colours."""
    geometry, appearance = make_system("neus", seed=0), make_system("neus", seed=1)
    video = transfer(geometry, appearance, tmp_path, n_frames=2, fps=5, resolution=32)
    frames = [iio.imread(p) for p in sorted((tmp_path / "frames").glob("*.png"))]
    assert len(frames) == 2 and frames[0].shape == (H, W, 3) and video.stat().st_size > 0
    assert frames[0].max() > 50 and geometry.model.texture is appearance.model.texture


def test_transfer_refuses_runs_with_different_feature_sizes(tmp_path):
    geometry, appearance = make_system(), make_system(overrides=("system.model.geometry.feature_dim=16",))
    with pytest.raises(InputError, match="appearance_run: its geometry feature size 16 differs from the geometry run's 32"):
        transfer(geometry, appearance, tmp_path)
    assert not (tmp_path / "frames").exists()


IDR_TINY = ["system=idr", "dataset.n_views=8", "dataset.width=64", "dataset.height=48", "export.resolution=64",
            "eval.chamfer_points=20000", "trainer.max_time=00:01:00:00"]  # bound by steps, not the 9-minute default


@pytest.mark.slow
def test_end_to_end_training_improves_chamfer(launch, tmp_path):
    metrics = {}
    for steps in (1, 150):
        run_dir = tmp_path / f"run{steps}"
        result = launch(*IDR_TINY, f"data_dir={tmp_path / 'data'}", f"trainer.max_steps={steps}", f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[steps] = json.loads((run_dir / "metrics.json").read_text())
    assert metrics[150]["step"] == 150
    assert metrics[150]["chamfer"] < 0.8 * metrics[1]["chamfer"]
    assert metrics[150]["iou"] > metrics[1]["iou"]


@pytest.mark.slow
def test_inspect_init_mode_writes_both_pngs(launch, tmp_path):
    run_dir = tmp_path / "inspect_run"
    result = launch(*IDR_TINY, f"data_dir={tmp_path / 'data'}", "mode=inspect_init", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("sdf_slice.png", "init_render.png"):
        image = iio.imread(run_dir / "inspect" / name)
        assert image.ndim == 3 and image.std() > 1  # a picture, not a blank
