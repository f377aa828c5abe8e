"""Tests for atomic mesh saving and reference-geometry loading."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import trimesh

from core import io as core_io
from core.errors import InputError
from systems.mesh_io import load_reference, save_mesh, save_textured_mesh


@pytest.fixture
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=2)


def test_save_ply_round_trip_with_colours(tmp_path: Path, sphere: trimesh.Trimesh) -> None:
    colors = np.random.default_rng(0).uniform(size=(len(sphere.vertices), 3))
    path = tmp_path / "nested" / "dir" / "mesh.ply"
    save_mesh(path, sphere.vertices.astype(np.float32), sphere.faces, colors)
    loaded = trimesh.load(path, process=False)
    assert loaded.vertices.shape == sphere.vertices.shape and loaded.faces.shape == sphere.faces.shape
    np.testing.assert_allclose(loaded.vertices, sphere.vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, sphere.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], np.round(colors * 255).astype(np.uint8))
    assert os.listdir(path.parent) == ["mesh.ply"]  # no temporary file left behind


def test_save_uint8_colours_and_other_formats(tmp_path: Path, sphere: trimesh.Trimesh) -> None:
    colors = np.random.default_rng(1).integers(0, 256, (len(sphere.vertices), 4), dtype=np.uint8)
    save_mesh(tmp_path / "a.ply", sphere.vertices, sphere.faces, colors)
    np.testing.assert_array_equal(trimesh.load(tmp_path / "a.ply", process=False).visual.vertex_colors, colors)
    for name in ("a.obj", "a.glb"):
        save_mesh(tmp_path / name, sphere.vertices, sphere.faces)
        vertices, faces = load_reference(tmp_path / name)
        assert vertices.shape == sphere.vertices.shape and faces.shape == sphere.faces.shape
    assert sorted(os.listdir(tmp_path)) == ["a.glb", "a.obj", "a.ply"]


def test_textured_mesh_round_trip(tmp_path: Path, sphere: trimesh.Trimesh) -> None:
    rng = np.random.default_rng(2)
    uv = rng.uniform(size=(len(sphere.vertices), 2))
    image = rng.uniform(size=(16, 16, 3))
    written = save_textured_mesh(tmp_path / "m.obj", sphere.vertices, sphere.faces, uv, image)
    assert [p.name for p in written] == ["m.png", "m.mtl", "m.obj", "m.glb"]
    assert sorted(os.listdir(tmp_path)) == ["m.glb", "m.mtl", "m.obj", "m.png"]  # no temporary file left
    assert "map_Kd m.png" in (tmp_path / "m.mtl").read_text()
    expected = np.round(image * 255).astype(np.uint8)
    for name, texture in (("m.obj", lambda m: m.visual.material.image), ("m.glb", lambda m: m.visual.material.baseColorTexture)):
        mesh = trimesh.load(tmp_path / name, process=False, force="mesh")
        np.testing.assert_allclose(mesh.vertices, sphere.vertices, atol=1e-6)
        np.testing.assert_array_equal(mesh.faces, sphere.faces)
        np.testing.assert_allclose(mesh.visual.uv, uv, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(texture(mesh).convert("RGB")), expected)
    glb = trimesh.load(tmp_path / "m.glb", process=False, force="mesh").visual.material
    assert glb.metallicFactor == 0.0  # matte: glTF's default of 1 shows near black without an environment map


@pytest.mark.parametrize("failure", ["export", "write", "replace"])
def test_failed_save_keeps_previous_file(
    tmp_path: Path, sphere: trimesh.Trimesh, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = tmp_path / "mesh.ply"
    save_mesh(path, sphere.vertices, sphere.faces)
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("simulated failure")

    target = {"export": (trimesh.Trimesh, "export"), "write": (core_io.os, "fsync"), "replace": (core_io.os, "replace")}
    monkeypatch.setattr(*target[failure], boom)
    bigger = trimesh.creation.icosphere(subdivisions=4)
    with pytest.raises(OSError, match="simulated"):
        save_mesh(path, bigger.vertices, bigger.faces)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["mesh.ply"]


def test_load_reference_mesh_and_point_cloud(tmp_path: Path, sphere: trimesh.Trimesh) -> None:
    sphere.export(tmp_path / "gt.stl")
    vertices, faces = load_reference(tmp_path / "gt.stl")
    assert faces is not None and faces.shape == sphere.faces.shape and faces.dtype == np.int64
    assert vertices.shape[1] == 3 and vertices.dtype == np.float64

    trimesh.PointCloud(sphere.vertices).export(tmp_path / "points.ply")
    points, no_faces = load_reference(str(tmp_path / "points.ply"))
    assert no_faces is None
    np.testing.assert_allclose(points, sphere.vertices)


def test_load_reference_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as err:
        load_reference(tmp_path / "missing.ply")
    assert err.value.where == str(tmp_path / "missing.ply")

    (tmp_path / "garbage.ply").write_text("this is not a ply file")
    with pytest.raises(InputError, match="cannot read"):
        load_reference(tmp_path / "garbage.ply")

    (tmp_path / "empty.stl").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_reference(tmp_path / "empty.stl")
    save_mesh(tmp_path / "empty.ply", np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    with pytest.raises(InputError, match="empty"):
        load_reference(tmp_path / "empty.ply")
    vertices, faces = load_reference(tmp_path / "empty.ply", allow_empty=True)
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)
