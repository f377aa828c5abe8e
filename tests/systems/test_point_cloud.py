"""export.points: an oriented, coloured point cloud of the final surface, in the world frame beside the mesh."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from core.errors import InputError
from datasets.npz import load_npz_scene
from launch import check_config, compose_config
from models.cameras import FixedCameras
from models.metrics import point_to_mesh_distance
from systems.mesh_io import point_cloud_path, save_point_cloud


def read_ply(path: Path) -> dict[str, np.ndarray]:
    """positions, normals and colours of a PLY point cloud, read by trimesh (not by our writer's code)."""
    loaded = trimesh.exchange.ply.load_ply(io.BytesIO(path.read_bytes()))
    return {"points": loaded["vertices"], "normals": loaded["vertex_normals"], "colors": loaded["vertex_colors"][:, :3]}


def test_point_cloud_file_round_trip(tmp_path: Path) -> None:
    gen = np.random.default_rng(0)
    points, normals = gen.normal(size=(50, 3)), gen.normal(size=(50, 3))
    colors = gen.uniform(size=(50, 3))
    save_point_cloud(tmp_path / "a.ply", points, normals, colors)
    assert (tmp_path / "a.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 50\n")
    loaded = read_ply(tmp_path / "a.ply")
    np.testing.assert_allclose(loaded["points"], points, rtol=1e-6)
    np.testing.assert_allclose(loaded["normals"], normals, rtol=1e-6)
    np.testing.assert_array_equal(loaded["colors"], np.round(colors * 255).astype(np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["a.ply"]  # written atomically, no temporary left
    assert point_cloud_path(tmp_path / "final_500.ply") == tmp_path / "final_500_points.ply"


CENTRE, RADIUS = torch.tensor([0.1, -0.2, 0.05]), 0.4  # the sphere, in the normalised frame


class SphereGeometry(nn.Module):
    """An exact sphere SDF, with the features of the system's own geometry network (for its colour network)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return (x - CENTRE).norm(dim=-1) - RADIUS

    def forward_with_gradient(self, x: torch.Tensor, create_graph: bool = True) -> tuple[torch.Tensor, ...]:
        return self.sdf(x), self.features(x)[1], F.normalize(x - CENTRE, dim=-1)


@pytest.fixture(scope="module")
def sphere_system(small_synthetic: Path):
    """A NeuS system on the small synthetic scene whose SDF is the sphere (CENTRE, RADIUS)."""
    cfg = compose_config(["system=neus", "encoder=frequency", "system.model.grid.resolution=16"])
    torch.manual_seed(0)
    scene = load_npz_scene(str(small_synthetic))
    system = instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(
        scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))
    system.model.geometry = SphereGeometry(system.model.geometry)
    return system.eval()


def test_points_lie_on_the_surface_with_outward_unit_normals_and_the_colour_networks_colours(sphere_system, tmp_path: Path) -> None:
    system = sphere_system
    mesh_path = tmp_path / "meshes" / "final.ply"
    system.export_mesh(mesh_path, 32, points=3000)
    cloud = read_ply(tmp_path / "meshes" / "final_points.ply")
    points, normals, colors = cloud["points"], cloud["normals"], cloud["colors"]
    assert points.shape == normals.shape == colors.shape == (3000, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
    # World frame like the mesh: the sphere's centre is scale_mat's translation; normals point away from it.
    scale_mat = system.scene.scale_mat
    radial = points - system.to_world(CENTRE.double().numpy()[None])
    radial /= np.linalg.norm(radial, axis=-1, keepdims=True)
    assert (normals * radial).sum(-1).min() > 0.9999
    mesh = trimesh.load(mesh_path, process=False)
    assert point_to_mesh_distance(points, mesh.vertices, mesh.faces).max() < 0.01 * RADIUS * scale_mat[0, 0]
    # On the zero level set (moved there from the mesh's chords), not merely near it.
    normalised = torch.from_numpy((points - scale_mat[:3, 3]) / scale_mat[0, 0]).float()
    with torch.no_grad():
        on_set = system.sdf(normalised).abs().numpy()
        chords = system.sdf(torch.from_numpy((mesh.vertices[mesh.faces].mean(1) - scale_mat[:3, 3]) / scale_mat[0, 0]).float()).abs()
    assert on_set.max() < 1e-5 < 1e-4 < float(chords.median())
    # Colours: the colour network seen head-on at each point, as the mesh's vertex colours are.
    expected = np.round(system.point_colors(normalised.numpy()) * 255)
    assert np.abs(colors.astype(float) - expected).max() <= 1
    assert colors.std() > 0  # not a constant fill


def test_an_empty_surface_writes_an_empty_cloud(sphere_system, tmp_path: Path) -> None:
    points, normals, colors = sphere_system.surface_points(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), 100, 0.1)
    assert points.shape == normals.shape == colors.shape == (0, 3)
    save_point_cloud(tmp_path / "e.ply", points, normals, colors)
    assert (tmp_path / "e.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\n")


def test_a_negative_point_count_is_refused_in_one_line() -> None:
    assert compose_config([]).export.points == 0  # off by default
    with pytest.raises(InputError) as info:
        check_config(["export.points=-5"])
    assert str(info.value) == "export.points: must be at least 0, got -5"
