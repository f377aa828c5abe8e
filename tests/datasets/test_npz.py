"""NeuS/IDR-layout loader: camera decomposition, real DTU data, and every bad-input error."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from core.errors import InputError
from datasets.npz import decompose_projection, load_npz_scene
from datasets.synthetic import camera_rig


@pytest.mark.parametrize("scale", [1.0, 37.5, -2.0])
def test_decompose_projection_round_trip(scale: float) -> None:
    K = np.array([[800.0, 1.5, 310.0], [0.0, 780.0, 245.0], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("xyz", [20.0, -130.0, 65.0], degrees=True).as_matrix()
    c2w[:3, 3] = [0.3, -2.1, 1.7]
    P = scale * K @ np.linalg.inv(c2w)[:3]
    K_out, c2w_out = decompose_projection(P)
    np.testing.assert_allclose(K_out, K, atol=1e-6)
    np.testing.assert_allclose(c2w_out, c2w, atol=1e-6)


def test_load_small_synthetic(small_synthetic: Path) -> None:
    scene = load_npz_scene(str(small_synthetic), test_every=3)
    K, c2w = camera_rig(6, 64, 48)
    assert scene.images.shape == (6, 48, 64, 3) and scene.images.dtype == torch.float32
    assert set(scene.masks.unique().tolist()) == {0.0, 1.0}
    assert (scene.train_ids, scene.test_ids) == ([1, 2, 4, 5], [0, 3])
    assert scene.gt_path == str(small_synthetic / "gt_mesh.ply")
    np.testing.assert_allclose(scene.intrinsics.numpy(), np.broadcast_to(K, (6, 3, 3)), atol=1e-4)
    np.testing.assert_allclose(scene.c2w.numpy(), c2w, atol=1e-5)
    assert scene.scale_mat[0, 0] == 100.0

    half = load_npz_scene(str(small_synthetic), downscale=2)
    assert half.images.shape == (6, 24, 32, 3) and half.masks.shape == (6, 24, 32)
    torch.testing.assert_close(half.intrinsics[:, :2], scene.intrinsics[:, :2] / 2)
    torch.testing.assert_close(half.images[0, 3, 5], scene.images[0, 6:8, 10:12].mean((0, 1)))


@pytest.fixture(scope="module")
def scan24(shared_data: Path):
    return load_npz_scene(str(shared_data / "dtu" / "scan24"))


def test_dtu_scan24_loads(scan24) -> None:
    assert scan24.n_views == 49 and scan24.hw == (600, 800) and scan24.masks is not None
    assert (scan24.intrinsics[:, 0, 0] > 0).all() and (scan24.intrinsics[:, 1, 1] > 0).all()
    assert scan24.images.min() >= 0 and scan24.images.max() <= 1
    rotations = scan24.c2w[:, :3, :3].double()
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(49, 3, 3))
    assert (torch.linalg.det(rotations) > 0).all()
    assert (scan24.c2w[:, :3, 3].norm(dim=-1) > 1.0).all()  # cameras outside the unit sphere


def test_dtu_scan24_mask_centroids_reproject(scan24, mask_centroid_rays) -> None:
    """The point closest to all mask-centroid rays projects near every mask centroid.

    Centroids of silhouettes are not projections of one 3D point, so the bound is loose (8 % of the width,
    median 3 %); a wrong decomposition (e.g. a transposed rotation) misses by more than the image width.
    """
    centroids, rays = mask_centroid_rays(scan24)
    d = rays.directions
    proj = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]
    point = torch.linalg.solve(proj.sum(0), (proj @ rays.origins[:, :, None]).sum(0))[:, 0]
    assert point.norm() < 0.5
    w2c = torch.linalg.inv(scan24.c2w.double())
    cam = (scan24.intrinsics.double() @ (w2c[:, :3, :3] @ point + w2c[:, :3, 3])[:, :, None])[:, :, 0]
    error = (cam[:, :2] / cam[:, 2:] - centroids).norm(dim=-1) / scan24.hw[1]
    assert error.max() < 0.08 and error.median() < 0.03


@pytest.fixture
def scene_copy(small_synthetic: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_synthetic, tmp_path / "scene"))


def _rewrite_cameras(root: Path, edit) -> None:
    with np.load(root / "cameras_sphere.npz") as data:
        cameras = dict(data)
    edit(cameras)
    np.savez(root / "cameras_sphere.npz", **cameras)


def _raises(root: Path, where: str, *words: str, **kwargs) -> None:
    with pytest.raises(InputError) as info:
        load_npz_scene(str(root), **kwargs)
    assert info.value.where.endswith(where), info.value.where
    for word in words:
        assert word in str(info.value)


def test_missing_folders_and_files(scene_copy: Path) -> None:
    _raises(scene_copy / "nope", "nope", "does not exist")
    shutil.rmtree(scene_copy / "mask")
    assert load_npz_scene(str(scene_copy)).masks is None
    (scene_copy / "cameras_sphere.npz").rename(scene_copy / "cameras.npz")
    assert load_npz_scene(str(scene_copy)).n_views == 6
    (scene_copy / "cameras.npz").unlink()
    _raises(scene_copy, "cameras_sphere.npz", "no camera file")
    shutil.rmtree(scene_copy / "image")
    _raises(scene_copy, "image", "no image folder")


def test_mask_count_mismatch(scene_copy: Path) -> None:
    (scene_copy / "mask" / "005.png").unlink()
    _raises(scene_copy, "mask", "5 masks but 6 images")


def test_missing_npz_key(scene_copy: Path) -> None:
    def drop_view_3(cameras: dict) -> None:
        cameras["world_mat_6"] = cameras.pop("world_mat_3")

    _rewrite_cameras(scene_copy, drop_view_3)
    _raises(scene_copy, "cameras_sphere.npz", "missing key world_mat_3")


def test_fewer_cameras_than_images(scene_copy: Path) -> None:
    _rewrite_cameras(scene_copy, lambda cameras: cameras.pop("world_mat_5"))
    _raises(scene_copy, "cameras_sphere.npz", "5 cameras", "6 images")


def test_missing_scale_mat_defaults_to_identity(scene_copy: Path) -> None:
    def drop_scale(cameras: dict) -> None:
        for i in range(6):
            cameras[f"world_mat_{i}"] = cameras[f"world_mat_{i}"] @ cameras.pop(f"scale_mat_{i}")

    _rewrite_cameras(scene_copy, drop_scale)
    scene = load_npz_scene(str(scene_copy))
    np.testing.assert_array_equal(scene.scale_mat, np.eye(4))
    np.testing.assert_allclose(scene.c2w.numpy(), camera_rig(6, 64, 48)[1], atol=1e-5)


def test_scale_mat_missing_for_one_view_is_refused(scene_copy: Path) -> None:
    """Not the identity for that view alone: its camera would land hundreds of units away."""
    _rewrite_cameras(scene_copy, lambda cameras: cameras.pop("scale_mat_4"))
    _raises(scene_copy, "cameras_sphere.npz", "missing key scale_mat_4", "5 other views")


def test_nan_camera_names_the_key_and_the_nan(scene_copy: Path) -> None:
    def poison(cameras: dict) -> None:
        cameras["world_mat_1"][0, 2] = np.nan

    _rewrite_cameras(scene_copy, poison)
    _raises(scene_copy, "cameras_sphere.npz", "world_mat_1", "NaN", "(0, 2)")


def test_empty_mask_is_refused(scene_copy: Path) -> None:
    """An all-black mask would carve the whole visual hull away."""
    Image.new("L", (64, 48)).save(scene_copy / "mask" / "003.png")
    _raises(scene_copy, "003.png", "mask is empty")


def test_non_invertible_camera(scene_copy: Path) -> None:
    def flatten_view_2(cameras: dict) -> None:
        cameras["world_mat_2"][1, :3] = cameras["world_mat_2"][0, :3]

    _rewrite_cameras(scene_copy, flatten_view_2)
    _raises(scene_copy, "cameras_sphere.npz", "world_mat_2", "not invertible")


def test_corrupt_image(scene_copy: Path) -> None:
    (scene_copy / "image" / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _raises(scene_copy, "002.png", "cannot read image")


def test_images_of_different_sizes(scene_copy: Path) -> None:
    Image.new("RGB", (32, 24)).save(scene_copy / "image" / "004.png")
    _raises(scene_copy, "004.png", "32x24", "64x48")


def test_bad_test_views_and_downscale(scene_copy: Path) -> None:
    _raises(scene_copy, "dataset.test_views", "out of range", test_views=[7])
    _raises(scene_copy, "dataset.downscale", ">= 1", downscale=0)


def test_refined_cameras_file_round_trips_as_the_start_poses(scene_copy: Path) -> None:
    """Cameras written by ``save_cameras`` (the run's cameras_refined.npz) read back exactly, and a
    scene folder's cameras_linear_init.npz becomes its starting poses for camera refinement."""
    from models.cameras import perturb_poses
    from systems.mesh_io import save_cameras

    scene = load_npz_scene(str(scene_copy))
    assert scene.init_c2w is None
    start = perturb_poses(scene.c2w.double(), 2.0, 0.01, seed=3)
    save_cameras(scene_copy / "cameras_linear_init.npz", scene.intrinsics.double().numpy(), start.numpy(), scene.scale_mat)
    again = load_npz_scene(str(scene_copy))
    np.testing.assert_allclose(again.init_c2w.numpy(), start.numpy(), atol=1e-5)
    np.testing.assert_allclose(again.c2w.numpy(), scene.c2w.numpy())
    with np.load(scene_copy / "cameras_linear_init.npz") as data:
        np.testing.assert_allclose(data["scale_mat_0"], scene.scale_mat)
