"""Sequences: the loader over generated, mixed-layout and bad folders; the moving synthetic object, its ground truth,
determinism and cache."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import binary_dilation
from scipy.spatial import cKDTree

from core.errors import InputError
from datasets import synthetic
from datasets.npz import load_npz_scene
from datasets.sequence import load_sequence
from tools.convert_scene import convert

TINY = {"n_frames": 3, "n_views": 4, "width": 32, "height": 24}
MESH_RESOLUTION = 96  # instead of 256: the tests' ground truth in 0.2 s a frame
CELL = 2.0 / (MESH_RESOLUTION - 1)  # marching cubes' grid step, normalised units


@pytest.fixture
def coarse_meshes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "MESH_RESOLUTION", MESH_RESOLUTION)


def _generate(folder: Path, **params: object) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "MESH_RESOLUTION", MESH_RESOLUTION)
        return Path(synthetic.generate_sequence(str(folder), **(TINY | params)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 frames of the default moving box_ellipsoid, 4 views of 32x24, twisted three times as much as the default."""
    return _generate(tmp_path_factory.mktemp("sequence") / "tiny", twist=1.5)


@pytest.fixture(scope="module")
def rigid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 frames of the handle moved rigidly only (no twist), with a large turn."""
    return _generate(tmp_path_factory.mktemp("sequence") / "rigid", shape="handle", rotation_deg=25.0, twist=0.0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _normalised_vertices(folder: Path) -> np.ndarray:
    """(V, 3) ground-truth vertices of a frame folder in the normalised frame."""
    world = np.asarray(trimesh.load(folder / "gt_mesh.ply", process=False).vertices)
    inverse = np.linalg.inv(load_npz_scene(str(folder)).scale_mat)
    return world @ inverse[:3, :3].T + inverse[:3, 3]


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def test_load_sequence(tiny: Path) -> None:
    sequence = load_sequence(str(tiny), test_every=2)
    assert len(sequence) == 3 and [p.name for p in sequence.frames] == ["frame_0000", "frame_0001", "frame_0002"]
    for i in range(3):
        scene = sequence.load(i)
        assert scene.name == f"tiny_frame_{i:04d}" and scene.gt_path == str(tiny / f"frame_{i:04d}" / "gt_mesh.ply")
        assert scene.images.shape == (4, 24, 32, 3) and scene.masks.shape == (4, 24, 32)
        assert (scene.train_ids, scene.test_ids) == ([1, 3], [0, 2])
    motions = sequence.motions
    assert motions.shape == (3, 4, 4)
    rotations = motions[:, :3, :3]
    np.testing.assert_allclose(rotations.transpose(0, 2, 1) @ rotations, np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    np.testing.assert_allclose(motions[:, 3], [[0, 0, 0, 1]] * 3, atol=0)
    np.testing.assert_allclose(motions[0], np.eye(4), atol=1e-15)
    turns = np.degrees(np.arctan2(rotations[:, 1, 0], rotations[:, 0, 0]))
    np.testing.assert_allclose(turns, [0.0, 3.0, 6.0], atol=1e-9)  # about world z, rotation_deg per frame
    np.testing.assert_allclose(rotations[:, 2], [[0, 0, 1]] * 3, atol=1e-12)
    # the half circle: |t| = translation sin(pi s / 2), ending at translation e1
    np.testing.assert_allclose(np.linalg.norm(motions[:, :3, 3], axis=1), 0.1 * np.sin(np.pi / 4 * np.arange(3)), atol=1e-12)
    np.testing.assert_allclose(motions[2, :3, 3], [0.1, 0.0, 0.0], atol=1e-12)
    assert sequence.load(1).scale_mat.tolist() == sequence.load(0).scale_mat.tolist()

    subset = load_sequence(str(tiny), frames=[0, 2], name="seq")
    assert len(subset) == 2 and subset.ids == [0, 2]
    assert subset.load(1).name == "seq_frame_0002"
    np.testing.assert_array_equal(subset.motions, motions[[0, 2]])


def test_the_object_moves_and_twists(tiny: Path, rigid: Path) -> None:
    masks = [load_npz_scene(str(tiny / f"frame_{i:04d}")).masks for i in range(2)]
    assert (masks[0] != masks[1]).sum() > 0.1 * masks[0].sum()
    # No twist: each frame's ground truth is frame 0's moved by motions[i] @ motions[0]^-1, up to marching cubes.
    motions = load_sequence(str(rigid)).motions
    first = _normalised_vertices(rigid / "frame_0000")
    for i in (1, 2):
        moved = _apply(motions[i] @ np.linalg.inv(motions[0]), first)
        vertices = _normalised_vertices(rigid / f"frame_{i:04d}")
        assert cKDTree(vertices).query(moved)[0].max() < CELL
        assert cKDTree(moved).query(vertices)[0].max() < CELL
        assert cKDTree(first).query(vertices)[0].max() > 5 * CELL  # it did move
    # With the twist, the rigid motion alone misses frame 1; undoing the documented twist lands on the shape.
    meta = json.loads((tiny / "sequence.json").read_text())
    motion, rate, size = np.asarray(meta["motions"][1]), meta["twist_rates"][1], meta["size"]
    assert rate == pytest.approx(1.5 * math.sin(2 * math.pi / 3))
    vertices = _normalised_vertices(tiny / "frame_0001")
    local = _apply(np.linalg.inv(motion), vertices)
    assert cKDTree(_apply(motion, _normalised_vertices(tiny / "frame_0000"))).query(vertices)[0].max() > 2 * CELL
    angle = -rate * local[:, 2]
    canonical = np.stack([np.cos(angle) * local[:, 0] - np.sin(angle) * local[:, 1],
                          np.sin(angle) * local[:, 0] + np.cos(angle) * local[:, 1], local[:, 2]], -1)
    distance = synthetic.scene_sdf(torch.from_numpy(canonical / size).float(), "box_ellipsoid").numpy() * size
    assert np.abs(distance).max() < 0.5 * CELL


def test_renders_match_the_moving_ground_truth(tiny: Path) -> None:
    """Every ground-truth vertex of every frame projects into (a pixel next to) its view's mask: the sphere tracer
    saw the same moved, twisted surface."""
    for i in range(3):
        folder = tiny / f"frame_{i:04d}"
        scene = load_npz_scene(str(folder))
        points = _normalised_vertices(folder)
        for view in range(scene.n_views):
            w2c = np.linalg.inv(scene.c2w[view].double().numpy())
            cam = _apply(w2c, points) @ scene.intrinsics[view].double().numpy().T
            pixels = np.floor(cam[:, :2] / cam[:, 2:]).astype(int)
            mask = binary_dilation(scene.masks[view].numpy() > 0.5, structure=np.ones((3, 3), bool))
            assert mask[pixels[:, 1], pixels[:, 0]].all(), (i, view)


def test_twisted_sdf_is_a_distance_bound() -> None:
    motion = synthetic.sequence_motions(5, 10.0, 0.1)[3]
    sdf, colours = synthetic._moving_object("box_ellipsoid", 0.8, motion, 2.0, synthetic.BOUND_RADIUS + 0.1)
    points = torch.nn.functional.normalize(torch.randn(20000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    points = (points * torch.rand(20000, 1, generator=torch.Generator().manual_seed(1)) * synthetic.BOUND_RADIUS)
    (grad,) = torch.autograd.grad(sdf(points.requires_grad_()).sum(), points)
    assert grad.norm(dim=-1).max() < 1.0 + 1e-5
    assert grad.norm(dim=-1).max() > 0.5  # divided by the bound, not by far more
    assert colours(points).min() >= 0.15 and colours(points).max() <= 0.9


@pytest.mark.parametrize("shape", list(synthetic.SHAPES))
def test_shape_radii(shape: str) -> None:
    directions = torch.nn.functional.normalize(torch.randn(50000, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    radius = synthetic.SHAPE_RADII[shape]
    assert (synthetic.scene_sdf(directions * radius, shape) > 0).all()  # every surface point lies within the radius
    assert (synthetic.scene_sdf(directions * (radius - 0.01), shape) < 0).any()  # and the radius is tight


def test_mixed_layouts(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    shutil.copytree(tiny / "frame_0000", root / "f_9")
    convert(tiny / "frame_0001", root / "f_10")  # NeuS2's transform.json
    (root / ".f_11.tmp123").mkdir()  # an interrupted write, ignored
    shutil.copy(tiny / "frame_0000" / "cameras_sphere.npz", root / ".f_11.tmp123")
    (root / "notes").mkdir()  # neither layout, ignored
    sequence = load_sequence(str(root), test_every=None)
    assert [p.name for p in sequence.frames] == ["f_9", "f_10"] and sequence.motions is None
    scenes = [sequence.load(i) for i in range(2)]
    assert [s.name for s in scenes] == ["mixed_frame_0000", "mixed_frame_0001"]
    reference = load_npz_scene(str(tiny / "frame_0001"), test_every=None)
    torch.testing.assert_close(scenes[1].images, reference.images, atol=0, rtol=0)
    torch.testing.assert_close(scenes[1].masks, reference.masks, atol=0, rtol=0)
    torch.testing.assert_close(scenes[1].c2w, reference.c2w, atol=1e-6, rtol=0)
    assert scenes[1].gt_path == str(root / "f_10" / "gt_mesh.ply")


def test_bad_inputs(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"^{tmp_path / 'missing'}: sequence folder does not exist$"):
        load_sequence(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="file: is not a folder"):
        load_sequence(str(tmp_path / "file"))
    (tmp_path / "empty" / "frame_0000").mkdir(parents=True)
    with pytest.raises(InputError, match=f"^{tmp_path / 'empty'}: no frame folders: .*cameras_sphere.npz"):
        load_sequence(str(tmp_path / "empty"))
    for frames in ([0, 3], [], [True]):
        with pytest.raises(InputError, match=r"^dataset\.frames: "):
            load_sequence(str(tiny), frames=frames)

    root = tmp_path / "scaled"
    for i in range(2):
        shutil.copytree(tiny / f"frame_{i:04d}", root / f"frame_{i}")
    cameras = dict(np.load(root / "frame_1" / "cameras_sphere.npz"))
    cameras |= {key: value @ np.diag([1.0001, 1.0, 1.0, 1.0]) for key, value in cameras.items() if key.startswith("scale_mat_")}
    np.savez(root / "frame_1" / "cameras_sphere.npz", **cameras)
    sequence = load_sequence(str(root))
    with pytest.raises(InputError, match=f"^{root / 'frame_1'}: scale_mat differs from that of .*frame_0"):
        sequence.load(1)
    load_sequence(str(root), frames=[1]).load(0)  # alone, it is its own reference

    convert(tiny / "frame_0000", tmp_path / "json")
    shutil.copy(tiny / "frame_0000" / "cameras_sphere.npz", tmp_path / "json")
    shutil.move(tmp_path / "json", root / "frame_2")
    with pytest.raises(InputError, match=f"^{root / 'frame_2'}: holds both"):
        load_sequence(str(root))
    shutil.rmtree(root / "frame_2")
    (root / "sequence.json").write_text(json.dumps({"motions": [np.eye(4).tolist()] * 3}))
    with pytest.raises(InputError, match=r"sequence.json: motions must be 2 finite 4x4 matrices .* shape \(3, 4, 4\)"):
        load_sequence(str(root))


def test_generation_is_deterministic(tiny: Path, tmp_path: Path) -> None:
    again = _files(_generate(tmp_path / "again", twist=1.5))
    first = _files(tiny)
    assert sorted(first) == sorted(again)
    assert {"sequence.json", "frame_0002/gt_mesh.ply", "frame_0002/image/003.png", "frame_0002/scene.json"} <= set(first)
    assert all(first[name] == again[name] for name in first)
    with pytest.raises(InputError, match="already exists"):
        synthetic.generate_sequence(str(tmp_path / "again"))


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(scale_mat: np.ndarray, sdf: synthetic.Field) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_gt_mesh", broken)
    with pytest.raises(KeyboardInterrupt):
        synthetic.load_synthetic_sequence(str(tmp_path), **TINY)
    assert list(tmp_path.iterdir()) == []


def test_load_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coarse_meshes: None) -> None:
    calls = []
    generate = synthetic._generate_sequence
    monkeypatch.setattr(synthetic, "_generate_sequence", lambda *args: calls.append(args) or generate(*args))
    sequence = synthetic.load_synthetic_sequence(str(tmp_path), **TINY, test_every=3, twist=0.2)
    again = synthetic.load_synthetic_sequence(str(tmp_path), **TINY, test_views=[1], frames=[1], twist=0.2)
    assert len(calls) == 1 and len(list(tmp_path.iterdir())) == 1
    assert sequence.frames[0].parent.name.startswith("sequence_box_ellipsoid_")
    assert (sequence.load(0).test_ids, again.load(0).test_ids) == ([0, 3], [1])
    assert again.load(0).name == "sequence_box_ellipsoid_frame_0001" and len(again) == 1
    np.testing.assert_array_equal(again.motions[0], sequence.motions[1])
    assert json.loads((sequence.frames[0].parent / "sequence.json").read_text())["twist"] == 0.2
    params = [3, 4, 32, 24, 100.0, "box_ellipsoid", 0.8, 3.0, 0.1]
    assert synthetic.sequence_cache_folder("c", *params, 0.2) != synthetic.sequence_cache_folder("c", *params, 0.3)


def test_bad_parameters(tmp_path: Path) -> None:
    for params, key in (({"n_frames": 0}, "n_frames"), ({"size": 2.0}, "size"), ({"size": 0.0}, "size"),
                        ({"translation": -0.1}, "translation"), ({"twist": math.nan}, "twist"),
                        ({"shape": "cube"}, "shape"), ({"width": 4}, "width")):
        with pytest.raises(InputError, match=rf"^dataset\.{key}: "):
            synthetic.load_synthetic_sequence(str(tmp_path), **params)
    with pytest.raises(InputError, match=r"reaches radius 0\.725 .* reduce dataset\.size or dataset\.translation"):
        synthetic.generate_sequence(str(tmp_path / "x"), translation=0.225)
    assert list(tmp_path.iterdir()) == []


def test_frames_without_cameras_or_of_another_image_size_are_refused(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "sequence"
    shutil.copytree(tiny / "frame_0000", root / "frame_0")
    shutil.copytree(tiny / "frame_0001", root / "frame_1")
    (root / "frame_1" / "cameras_sphere.npz").unlink()
    with pytest.raises(InputError, match=f"^{root / 'frame_1'}: frame folder holds images but no cameras"):
        load_sequence(str(root))
    (root / "notes").mkdir()  # a folder without images is not a frame: ignored
    shutil.rmtree(root / "frame_1")
    wide = _generate(tmp_path / "wide", width=48, height=36)
    shutil.copytree(wide / "frame_0001", root / "frame_1")
    sequence = load_sequence(str(root))
    assert len(sequence) == 2 and sequence.load(0).hw == (24, 32)
    with pytest.raises(InputError, match=f"^{root / 'frame_1'}: images are 48x36 pixels, those of .*frame_0 32x24"):
        sequence.load(1)
