"""instant-ngp / NeuS2 loader: agreement with the NeuS loader on converted scenes, the NeuS npz <-> NeuS2
json round trip on scan24, plain instant-ngp conventions, and every bad-input error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import InputError
from datasets.ngp import load_ngp_scene
from datasets.npz import load_npz_scene
from tools.convert_scene import convert


def test_neus2_conversion_loads_like_npz(small_synthetic: Path, tmp_path: Path) -> None:
    convert(small_synthetic, tmp_path / "json")
    meta = json.loads((tmp_path / "json" / "transform.json").read_text())
    assert meta["from_na"] is True and (meta["scale"], meta["offset"]) == (0.5, [0.5, 0.5, 0.5])
    npz = load_npz_scene(str(small_synthetic), test_every=3)
    ngp = load_ngp_scene(str(tmp_path / "json"), test_every=3)
    torch.testing.assert_close(ngp.intrinsics, npz.intrinsics, atol=1e-4, rtol=0)
    torch.testing.assert_close(ngp.c2w, npz.c2w, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ngp.scale_mat, npz.scale_mat, rtol=1e-12)
    torch.testing.assert_close(ngp.images, npz.images, atol=0, rtol=0)
    torch.testing.assert_close(ngp.masks, npz.masks, atol=0, rtol=0)
    assert (ngp.train_ids, ngp.test_ids) == (npz.train_ids, npz.test_ids)
    assert ngp.gt_path == str(tmp_path / "json" / "gt_mesh.ply")

    half = load_ngp_scene(str(tmp_path / "json"), downscale=2)
    torch.testing.assert_close(half.intrinsics[:, :2], ngp.intrinsics[:, :2] / 2)
    assert half.masks.shape == (6, 24, 32)


@pytest.fixture(scope="module")
def scan24_subset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Views 0, 17 and 40 of the shared scan24 as a 3-view NeuS scene (keys renumbered 0..2)."""
    src, dst = shared_data / "dtu" / "scan24", tmp_path_factory.mktemp("scan24") / "npz"
    (dst / "image").mkdir(parents=True)
    (dst / "mask").mkdir()
    cameras = {}
    with np.load(src / "cameras_sphere.npz") as data:
        for new, old in enumerate((0, 17, 40)):
            for folder in ("image", "mask"):
                shutil.copy(src / folder / f"{old:03d}.png", dst / folder / f"{new:03d}.png")
            cameras |= {f"world_mat_{new}": data[f"world_mat_{old}"], f"scale_mat_{new}": data[f"scale_mat_{old}"]}
    np.savez(dst / "cameras_sphere.npz", **cameras)
    return dst


def test_scan24_round_trip(scan24_subset: Path, tmp_path: Path) -> None:
    """npz -> NeuS2 json -> npz keeps the projections (up to scale), scale_mat, images and masks; the json
    loads with the same cameras as the npz."""
    convert(scan24_subset, tmp_path / "json")
    convert(tmp_path / "json", tmp_path / "back")
    npz = load_npz_scene(str(scan24_subset))
    ngp = load_ngp_scene(str(tmp_path / "json"))
    torch.testing.assert_close(ngp.c2w, npz.c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(ngp.intrinsics, npz.intrinsics, atol=1e-3, rtol=0)
    with np.load(scan24_subset / "cameras_sphere.npz") as a, np.load(tmp_path / "back" / "cameras_sphere.npz") as b:
        for i in range(3):
            original, back = a[f"world_mat_{i}"][:3], b[f"world_mat_{i}"][:3]
            ratio = (back * original).sum() / (original * original).sum()
            np.testing.assert_allclose(back, ratio * original, atol=1e-9 * np.abs(back).max())
            np.testing.assert_allclose(b[f"scale_mat_{i}"], a[f"scale_mat_{i}"], rtol=1e-12, atol=1e-12)
    for i in range(3):
        name = f"{i:03d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back" / "image" / name)),
                                      np.asarray(Image.open(scan24_subset / "image" / name).convert("RGB")))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back" / "mask" / name)),
                                      np.asarray(Image.open(scan24_subset / "mask" / name).convert("RGB"))[..., 0])
        rgba = np.asarray(Image.open(tmp_path / "json" / "images" / name))
        assert rgba.shape == (600, 800, 4) and set(np.unique(rgba[..., 3])) == {0, 255}  # NeuS2: the mask as alpha


def test_lego_loads_like_blender(shared_data: Path) -> None:
    """NeRF's Blender scenes are instant-ngp scenes (camera_angle_x, OpenGL poses, RGBA, a train/test pair)."""
    from datasets.blender import load_blender_scene

    root = shared_data / "nerf_synthetic" / "lego"
    ngp, blender = load_ngp_scene(str(root), downscale=4), load_blender_scene(str(root), downscale=4)
    assert (ngp.train_ids, ngp.test_ids) == (blender.train_ids, blender.test_ids)
    torch.testing.assert_close(ngp.images, blender.images, atol=0, rtol=0)
    torch.testing.assert_close(ngp.masks, blender.masks, atol=0, rtol=0)
    torch.testing.assert_close(ngp.intrinsics, blender.intrinsics)
    torch.testing.assert_close(ngp.c2w[:, :3, :3], blender.c2w[:, :3, :3])
    world = [np.einsum("ij,nj->ni", s.scale_mat, s.c2w[:, :, 3].double().numpy()) for s in (ngp, blender)]
    np.testing.assert_allclose(world[0], world[1], atol=1e-5)
    assert ngp.scale_mat[0, 0] == pytest.approx(1 / 0.66)  # ngp's default scale 0.33


def _gl_pose(centre: list[float], right: list[float], up: list[float]) -> list[list[float]]:
    """An OpenGL camera-to-world (x right, y up, z backward) as a JSON matrix."""
    right, up = np.asarray(right, float), np.asarray(up, float)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, up, np.cross(right, up)], axis=1)
    pose[:3, 3] = centre
    return pose.tolist()


def _write_images(folder: Path, names: list[str], size: tuple[int, int] = (32, 24), alpha: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = np.full((size[1], size[0], 4 if alpha else 3), 200, np.uint8)
        if alpha:
            pixels[..., 3] = 0
            pixels[8:16, 10:20, 3] = 255
        Image.fromarray(pixels).save(folder / f"{name}.png")


@pytest.fixture
def plain_ngp(tmp_path: Path) -> Path:
    """instant-ngp style: top-level fl_x/cx/cy/w/h, OpenGL poses, default scale/offset; camera a at +z
    looking at the origin, camera b at +x looking at it with world z up. file_path without extension."""
    root = tmp_path / "ngp"
    _write_images(root / "images", ["a", "b"])
    meta = {"fl_x": 40.0, "cx": 15.0, "cy": 13.0, "w": 32, "h": 24, "k1": 0.0, "p1": 0, "aabb_scale": 4, "frames": [
        {"file_path": "images/a", "transform_matrix": _gl_pose([0, 0, 4], [1, 0, 0], [0, 1, 0])},
        {"file_path": "./images/b.png", "transform_matrix": _gl_pose([4, 0, 0], [0, 1, 0], [0, 0, 1])},
    ]}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def _project(scene, view: int, world: list[float]) -> np.ndarray:
    """Pixel (u, v) of a point given in the json's world frame."""
    point = np.linalg.solve(scene.scale_mat, [*world, 1.0])
    camera = np.linalg.inv(scene.c2w[view].double().numpy()) @ point
    uvw = scene.intrinsics[view].double().numpy() @ camera[:3]
    return uvw[:2] / uvw[2]


def test_plain_ngp_conventions(plain_ngp: Path) -> None:
    scene = load_ngp_scene(str(plain_ngp), test_every=None)
    assert scene.masks is None and scene.hw == (24, 32) and scene.test_ids == []
    # x = 2 (0.33 p + 0.5) - 1: the unit sphere is the sphere inscribed in ngp's unit cube.
    np.testing.assert_allclose(scene.scale_mat, np.diag([1 / 0.66, 1 / 0.66, 1 / 0.66, 1.0]), rtol=1e-12)
    expected = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 4 * 0.66], [0, 0, 0, 1]])  # OpenCV axes
    np.testing.assert_allclose(scene.c2w[0].numpy(), expected, atol=1e-6)
    torch.testing.assert_close(scene.intrinsics[1], torch.tensor([[40.0, 0, 15], [0, 40, 13], [0, 0, 1]]))
    for view in (0, 1):
        np.testing.assert_allclose(_project(scene, view, [0, 0, 0]), [15, 13], atol=1e-5)  # both look at the origin
    u, v = _project(scene, 0, [0.5, 0, 0]) - [15, 13]
    assert u > 4 and abs(v) < 1e-5  # world +x is to the right of camera a
    u, v = _project(scene, 0, [0, 0.5, 0]) - [15, 13]
    assert v < -4 and abs(u) < 1e-5  # its up (world +y) is up in the image (v grows downwards)
    u, v = _project(scene, 1, [0, 0, 0.5]) - [15, 13]
    assert v < -4 and abs(u) < 1e-5  # camera b: world z is up
    u, v = _project(scene, 1, [0, 0.5, 0]) - [15, 13]
    assert u > 4 and abs(v) < 1e-5


def test_plain_ngp_options(plain_ngp: Path) -> None:
    """aabb, camera_angle_x with a per-frame fl_y override, from_na false, RGBA alpha as masks, a train/test pair."""
    meta = json.loads((plain_ngp / "transforms.json").read_text())
    for key in ("fl_x", "cx", "cy"):
        del meta[key]
    meta |= {"camera_angle_x": 1.2, "aabb": [[-1, -2, -1], [3, 2, 1]], "from_na": False}
    meta["frames"][1]["fl_y"] = 30.0
    _write_images(plain_ngp / "images", ["a", "b"], alpha=True)
    (plain_ngp / "transforms.json").unlink()
    (plain_ngp / "transforms_train.json").write_text(json.dumps(meta))
    (plain_ngp / "transforms_test.json").write_text(json.dumps(meta | {"frames": meta["frames"][1:]}))
    scene = load_ngp_scene(str(plain_ngp), test_every=2)
    assert (scene.train_ids, scene.test_ids) == ([0, 1], [2])
    focal = float(16 / np.tan(0.6))
    torch.testing.assert_close(scene.intrinsics[0], torch.tensor([[focal, 0, 16], [0, focal, 12], [0, 0, 1]]))
    torch.testing.assert_close(scene.intrinsics[1, :2, :2], torch.tensor([[focal, 0], [0, 30.0]]))
    # The box's longest side (4) spans [-1, 1]; its centre (1, 0, 0) is the origin.
    np.testing.assert_allclose(scene.scale_mat, [[2, 0, 0, 1], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(scene.c2w[:, :3, 3].numpy(), [[-0.5, 0, 2], [1.5, 0, 0], [1.5, 0, 0]], atol=1e-6)
    assert scene.masks.shape == (3, 24, 32) and scene.masks.sum().item() == 3 * 80


def _raises(root: Path, where: str, *words: str, **kwargs) -> None:
    with pytest.raises(InputError) as info:
        load_ngp_scene(str(root), **kwargs)
    assert info.value.where.endswith(where), info.value.where
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)


def _edit(root: Path, change) -> None:
    meta = json.loads((root / "transforms.json").read_text())
    change(meta)
    (root / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change, where, words", [
    (lambda m: m["frames"][1].pop("transform_matrix"), "transforms.json", ["missing key frames[1].transform_matrix"]),
    (lambda m: [m.pop(k) for k in ("fl_x", "cx")], "transforms.json", ["frames[0] has no intrinsics"]),
    (lambda m: m.update(w=64), "a.png", ["image is 32x24", "declares w=64"]),
    (lambda m: m["frames"][0].update(k1=0.1), "transforms.json", ["frames[0].k1=0.1", "distortion is not supported"]),
    (lambda m: m["frames"][0].update(file_path="images/nope"), "images/nope", ["frame image not found"]),
    (lambda m: m["frames"][0]["transform_matrix"][0].__setitem__(0, 2.0), "transforms.json", ["not a rigid"]),
    (lambda m: m["frames"][0].update(transform_matrix=[[1, 0], [0, 1]]), "transforms.json", ["3x4 or 4x4", "(2, 2)"]),
    (lambda m: m.update(scale=-1), "transforms.json", ["scale must be a positive finite number"]),
    (lambda m: m.update(offset=[0.5, 0.5]), "transforms.json", ["offset must be a finite 3 matrix"]),
    (lambda m: m.update(frames=[]), "transforms.json", ["frames must be a non-empty list"]),
])
def test_bad_transforms(plain_ngp: Path, change, where: str, words: list[str]) -> None:
    _edit(plain_ngp, change)
    _raises(plain_ngp, where, *words)


def test_bad_files(plain_ngp: Path) -> None:
    _raises(plain_ngp / "nope", "nope", "scene folder does not exist")
    _raises(plain_ngp, "other.json", "transforms file does not exist", transforms="other.json")
    Image.fromarray(np.zeros((12, 32, 3), np.uint8)).save(plain_ngp / "images" / "b.png")
    _raises(plain_ngp, "b.png", "image is 32x12")
    _edit(plain_ngp, lambda m: [m.pop(k) for k in ("w", "h")])
    _raises(plain_ngp, "b.png", "image is 32x12 but a.png is 32x24")
    _write_images(plain_ngp / "images", ["a", "b"], alpha=True)
    Image.fromarray(np.zeros((24, 32, 4), np.uint8)).save(plain_ngp / "images" / "b.png")
    _raises(plain_ngp, "b.png", "mask is empty")
    (plain_ngp / "transforms.json").write_text("{not json")
    _raises(plain_ngp, "transforms.json", "invalid JSON")
    (plain_ngp / "transforms.json").unlink()
    _raises(plain_ngp, "transforms.json", "no transforms file")


def test_split_files_must_agree(plain_ngp: Path) -> None:
    meta = json.loads((plain_ngp / "transforms.json").read_text())
    (plain_ngp / "transforms.json").rename(plain_ngp / "transform_train.json")
    (plain_ngp / "transform_test.json").write_text(json.dumps(meta | {"scale": 0.5}))
    _raises(plain_ngp, "transform_test.json", "differ from transform_train.json")
