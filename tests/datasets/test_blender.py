"""Blender-layout loader: the shared lego scene and bad-input errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import InputError
from datasets.blender import load_blender_scene


@pytest.fixture(scope="module")
def lego_root(shared_data: Path) -> Path:
    return shared_data / "nerf_synthetic" / "lego"


@pytest.fixture(scope="module")
def lego(lego_root: Path):
    return load_blender_scene(str(lego_root))


def test_lego_loads(lego, lego_root: Path) -> None:
    assert lego.n_views == 100 and lego.hw == (400, 400)
    assert (len(lego.train_ids), lego.test_ids) == (90, list(range(90, 100)))
    angle = json.loads((lego_root / "transforms_train.json").read_text())["camera_angle_x"]
    focal = 0.5 * 400 / math.tan(0.5 * angle)
    torch.testing.assert_close(lego.intrinsics[7], torch.tensor([[focal, 0, 200], [0, focal, 200], [0, 0, 1.0]]))
    assert 0.0 <= lego.masks.min() and lego.masks.max() <= 1.0
    assert ((lego.masks > 0) & (lego.masks < 1)).any()  # soft alpha edges are kept
    np.testing.assert_array_equal(lego.scale_mat, np.diag([1.5, 1.5, 1.5, 1.0]))
    centres = lego.c2w[:, :3, 3]
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((100,), 4.0311 / 1.5), atol=1e-3, rtol=0)


def test_lego_cameras_look_at_the_object(lego, mask_centroid_rays) -> None:
    """OpenCV axes: +z looks at the origin, and rays through the alpha centroids pass close to it."""
    centres = lego.c2w[:, :3, 3]
    assert ((lego.c2w[:, :3, 2] * -centres).sum(-1) / centres.norm(dim=-1) > 0.99).all()
    _, rays = mask_centroid_rays(lego)
    along = (rays.origins * rays.directions).sum(-1, keepdim=True)
    assert (rays.origins - along * rays.directions).norm(dim=-1).max() < 0.3


def test_lego_options(lego_root: Path) -> None:
    scene = load_blender_scene(str(lego_root), scene_radius=3.0, downscale=4, max_test_views=3, name="x")
    assert scene.n_views == 93 and scene.hw == (100, 100) and scene.test_ids == [90, 91, 92] and scene.name == "x"
    full = json.loads((lego_root / "transforms_train.json").read_text())["camera_angle_x"]
    assert scene.intrinsics[0, 0, 0].item() == pytest.approx(50 / math.tan(0.5 * full), rel=1e-6)
    assert scene.c2w[:, :3, 3].norm(dim=-1).mean().item() == pytest.approx(4.0311 / 3.0, abs=1e-3)


@pytest.fixture
def tiny_blender(tmp_path: Path) -> Path:
    """Two train and one test 8x8 RGBA frames at identity-like poses."""
    for split, names in (("train", ["a", "b"]), ("test", ["c"])):
        (tmp_path / split).mkdir()
        frames = []
        for name in names:
            Image.new("RGBA", (8, 8), (200, 100, 50, 128)).save(tmp_path / split / f"{name}.png")
            frames.append({"file_path": f"./{split}/{name}", "transform_matrix": np.eye(4).tolist()})
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    return tmp_path


def test_tiny_scene_conventions(tiny_blender: Path) -> None:
    scene = load_blender_scene(str(tiny_blender))
    torch.testing.assert_close(scene.images[0, 0, 0], torch.tensor([200, 100, 50]) / 255.0)
    torch.testing.assert_close(scene.masks, torch.full((3, 8, 8), 128 / 255.0))
    torch.testing.assert_close(scene.c2w[0], torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])))
    # Held-out renders and log lines name a view by its file.
    assert [scene.view_label(i) for i in range(3)] == ["train_a", "train_b", "test_c"]


def _raises(root: Path, where: str, *words: str) -> None:
    with pytest.raises(InputError) as info:
        load_blender_scene(str(root))
    assert info.value.where.endswith(where), info.value.where
    for word in words:
        assert word in str(info.value)


def test_bad_inputs(tiny_blender: Path) -> None:
    _raises(tiny_blender / "nope", "nope", "does not exist")
    (tiny_blender / "test" / "c.png").unlink()
    _raises(tiny_blender, "c.png", "frame image not found", "transforms_test.json")
    meta_path = tiny_blender / "transforms_train.json"
    meta = json.loads(meta_path.read_text())
    del meta["frames"][1]["transform_matrix"]
    meta_path.write_text(json.dumps(meta))
    _raises(tiny_blender, "transforms_train.json", "missing key frames[1].transform_matrix")
    meta_path.write_text("{not json")
    _raises(tiny_blender, "transforms_train.json", "invalid JSON")
    meta_path.unlink()
    _raises(tiny_blender, "transforms_train.json", "does not exist")
