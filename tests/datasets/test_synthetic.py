"""The default synthetic scene: determinism, caching, atomic writes and ground-truth consistency."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.ndimage import binary_dilation

from datasets import synthetic
from datasets.errors import InputError
from datasets.npz import load_npz_scene

SMALL = {"n_views": 6, "width": 64, "height": 48}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic(small_synthetic: Path, tmp_path: Path) -> None:
    again = _files(Path(synthetic.generate_scene(str(tmp_path / "again"), **SMALL)))
    first = _files(small_synthetic)
    assert sorted(first) == sorted(again)
    assert {"cameras_sphere.npz", "gt_mesh.ply", "scene.json", "image/005.png", "mask/005.png"} <= set(first)
    assert all(first[name] == again[name] for name in first)
    with pytest.raises(InputError, match="already exists"):
        synthetic.generate_scene(str(tmp_path / "again"), **SMALL)


def test_load_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    generate = synthetic._generate
    monkeypatch.setattr(synthetic, "_generate", lambda *args: calls.append(args) or generate(*args))
    scene = synthetic.load_synthetic_scene(str(tmp_path), **SMALL, test_every=3)
    again = synthetic.load_synthetic_scene(str(tmp_path), **SMALL, test_views=[1])
    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [synthetic.cache_folder(str(tmp_path), **SMALL, world_scale=100.0).name]
    assert scene.name == "synthetic" and Path(scene.gt_path).is_file()
    assert (scene.test_ids, again.test_ids) == ([0, 3], [1])
    torch.testing.assert_close(scene.images, again.images)
    assert synthetic.cache_folder(str(tmp_path), 6, 64, 48, 100.0) != synthetic.cache_folder(str(tmp_path), 6, 64, 48, 50.0)


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(scale_mat: np.ndarray) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_gt_mesh", broken)
    with pytest.raises(KeyboardInterrupt):
        synthetic.load_synthetic_scene(str(tmp_path), **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset.n_views"):
        synthetic.load_synthetic_scene(str(tmp_path), n_views=0)
    with pytest.raises(InputError, match="dataset.world_scale"):
        synthetic.load_synthetic_scene(str(tmp_path), world_scale=-1.0)


def _project(points: np.ndarray, K: torch.Tensor, c2w: torch.Tensor) -> np.ndarray:
    """(P, 3) normalised points -> (P, 2) pixel coordinates in one view."""
    w2c = np.linalg.inv(c2w.double().numpy())
    cam = (points @ w2c[:3, :3].T + w2c[:3, 3]) @ K.double().numpy().T
    return cam[:, :2] / cam[:, 2:]


def test_gt_mesh_matches_sdf_and_masks(small_synthetic: Path) -> None:
    scene = load_npz_scene(str(small_synthetic))
    mesh = trimesh.load(scene.gt_path, process=False)
    assert mesh.is_watertight and mesh.volume > 0  # outward faces
    world = np.asarray(mesh.vertices)
    assert np.abs(world.mean(0) - [15.0, -30.0, 550.0]).max() < 20.0  # DTU-like millimetres
    points = world @ np.linalg.inv(scene.scale_mat)[:3, :3].T + np.linalg.inv(scene.scale_mat)[:3, 3]
    assert np.abs(synthetic.scene_sdf(torch.from_numpy(points).float()).numpy()).max() < 0.01
    assert 0.6 < np.linalg.norm(points, axis=1).max() < synthetic.BOUND_RADIUS
    for i in range(scene.n_views):
        mask = binary_dilation(scene.masks[i].numpy() > 0.5, iterations=1)
        pixels = np.floor(_project(points, scene.intrinsics[i], scene.c2w[i])).astype(int)
        assert mask[pixels[:, 1], pixels[:, 0]].all(), f"view {i}"


def test_default_rig_frames_the_whole_object(small_synthetic: Path) -> None:
    points = np.asarray(trimesh.load(small_synthetic / "gt_mesh.ply", process=False).vertices)
    points = (points - [15.0, -30.0, 550.0]) / 100.0
    K, c2w = synthetic.camera_rig(32, 200, 150)
    elevations = np.degrees(np.arcsin(c2w[:, 2, 3] / 3.0))
    low, high = synthetic.ELEVATIONS_DEG
    assert low <= elevations.min() < low + 5 and high - 5 < elevations.max() <= high
    assert elevations.min() < 0  # the underside is observed too
    for view in c2w:
        pixels = _project(points, torch.from_numpy(K), torch.from_numpy(view))
        assert (pixels > 5).all() and (pixels < [195, 145]).all()


def test_images_and_texture(small_synthetic: Path) -> None:
    image = np.asarray(Image.open(small_synthetic / "image" / "000.png"))
    mask = np.asarray(Image.open(small_synthetic / "mask" / "000.png"))
    assert image.shape == (48, 64, 3) and set(np.unique(mask)) == {0, 255}
    assert image[mask == 0].mean() < 10 and image[mask == 255].std() > 20  # black background, textured object
    colours = synthetic.albedo(torch.rand(10000, 3) * 2 - 1)
    assert colours.min() >= 0.15 and colours.max() <= 0.9 and colours.std(0).min() > 0.1


def test_scene_sdf_values_and_lipschitz() -> None:
    probes = torch.tensor([[0.0, 0.0, 0.15], [0.0, 0.0, 0.55], [0.66, 0.0, -0.12], [0.0, 0.0, 0.95]])
    torch.testing.assert_close(synthetic.scene_sdf(probes), torch.tensor([-0.40, 0.0, 0.0, 0.40]), atol=1e-6, rtol=0)
    points = (torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_()
    (grad,) = torch.autograd.grad(synthetic.scene_sdf(points).sum(), points)
    assert grad.norm(dim=-1).max() < 1.0 + 1e-5
