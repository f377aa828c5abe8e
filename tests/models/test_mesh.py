"""Tests for marching-cubes extraction and connected-component filtering."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.mesh import decimate, extract_mesh, largest_component
from models.samplers import OccupancyGrid


def sphere_sdf(radius: float, center: tuple[float, float, float] = (0.0, 0.0, 0.0)):
    c = torch.tensor(center)
    return lambda x: (x - c).norm(dim=-1) - radius


def box_sdf(half: tuple[float, float, float]):
    h = torch.tensor(half)

    def sdf(x: torch.Tensor) -> torch.Tensor:
        q = x.abs() - h
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)

    return sdf


def area_and_volume(vertices: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1).sum()
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return float(area), float(volume)


def test_sphere_area_volume_and_outward_orientation() -> None:
    r = 0.5
    v, f = extract_mesh(sphere_sdf(r), 128)
    assert v.dtype == np.float32 and f.dtype == np.int64 and v.shape[1] == f.shape[1] == 3
    area, volume = area_and_volume(v, f)
    assert volume > 0  # outward normals give a positive signed volume
    assert area == pytest.approx(4 * np.pi * r**2, rel=0.01)
    assert volume == pytest.approx(4 / 3 * np.pi * r**3, rel=0.01)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), r, atol=2e-3)
    # Every face normal points away from the centre.
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (np.einsum("ij,ij->i", normals, v[f].mean(axis=1)) > 0).all()


def test_box_volume_and_column_output() -> None:
    half = (0.31, 0.23, 0.17)
    sdf = box_sdf(half)
    v, f = extract_mesh(lambda x: sdf(x)[:, None], 128, chunk=10_000)  # (P, 1) output, odd chunk
    _, volume = area_and_volume(v, f)
    assert volume == pytest.approx(8 * np.prod(half), rel=0.01)
    np.testing.assert_allclose(np.abs(v).max(axis=0), half, atol=1e-3)


def test_bounding_sphere_clips_the_surface() -> None:
    # A half-space crossing the whole cube becomes a closed cap inside the unit sphere.
    v, f = extract_mesh(lambda x: x[:, 2] - 0.5, 64, refine=False)
    _, volume = area_and_volume(v, f)
    assert np.linalg.norm(v, axis=1).max() <= 1.0 + 1e-3
    cap = np.pi * 0.5**2 * (3 - 0.5) / 3  # the unit sphere's cap above z = 0.5 (height 0.5) is outside
    assert volume == pytest.approx(4 / 3 * np.pi - cap, rel=0.02)


def test_refine_uses_a_finer_second_grid() -> None:
    calls: list[torch.Tensor] = []
    sdf = sphere_sdf(0.3)

    def recording(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.clone())
        return sdf(x)

    res = 32
    v_fine, _ = extract_mesh(recording, res, chunk=4096)
    points = torch.cat(calls)
    assert len(points) == 2 * res**3
    first, second = points[: res**3], points[res**3 :]
    step_first = float(first[:, 0].unique().diff().mean())
    step_second = float(second[:, 0].unique().diff().mean())
    assert step_first == pytest.approx(2 / (res - 1), rel=1e-4)
    assert step_second < 0.5 * step_first
    assert float(second.abs().max()) <= 0.3 + 3 * step_first
    v_coarse, _ = extract_mesh(sdf, res, refine=False)
    err_fine, err_coarse = (np.abs(np.linalg.norm(v, axis=1) - 0.3).mean() for v in (v_fine, v_coarse))
    assert err_fine < err_coarse


def test_no_surface_gives_empty_arrays() -> None:
    v, f = extract_mesh(lambda x: torch.ones(len(x)), 16)
    assert v.shape == (0, 3) and f.shape == (0, 3) and f.dtype == np.int64


def test_largest_component_keeps_bigger_sphere() -> None:
    small, big = sphere_sdf(0.2, (-0.5, 0, 0)), sphere_sdf(0.35, (0.4, 0, 0))
    v, f = extract_mesh(lambda x: torch.minimum(small(x), big(x)), 64, refine=False)
    kept_v, kept_f = largest_component(v, f)
    assert 0 < len(kept_f) < len(f)
    assert kept_f.min() == 0 and kept_f.max() == len(kept_v) - 1
    assert len(np.unique(kept_f)) == len(kept_v)  # no unused vertices
    np.testing.assert_allclose(np.linalg.norm(kept_v - [0.4, 0, 0], axis=1), 0.35, atol=0.01)
    _, volume = area_and_volume(kept_v, kept_f)
    assert volume == pytest.approx(4 / 3 * np.pi * 0.35**3, rel=0.03)


def test_empty_space_hides_spurious_surfaces_but_keeps_the_interior() -> None:
    # The renderer's grid is occupied only in a band around a sphere of radius 0.4 (its interior and
    # the space around it are empty). The field also has a blob in that empty space and is negative
    # near the bounding sphere, as sine-based fields can be where no ray samples: neither is exported,
    # and the empty interior (enclosed by the band) is not hollowed out.
    grid = OccupancyGrid(resolution=32)
    sdf_true = sphere_sdf(0.4)
    blob = sphere_sdf(0.15, (-0.6, 0.5, 0.0))
    grid.occupied.copy_((sdf_true(grid.cell_centers()).abs() < grid.cell_size).reshape(grid.occupied.shape))

    def field(x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.minimum(sdf_true(x), blob(x)), 0.9 - x.norm(dim=-1))

    v, f = extract_mesh(field, 64)
    assert len(largest_component(v, f)[1]) < len(f) and np.linalg.norm(v, axis=1).max() > 0.85  # the spurious surfaces
    exterior = grid.exterior()
    v, f = extract_mesh(field, 64, outside=lambda x: grid.lookup(x, exterior))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 0.4, atol=5e-3)
    _, volume = area_and_volume(v, f)
    assert volume == pytest.approx(4 / 3 * np.pi * 0.4**3, rel=0.02)  # one closed sphere, solid


def test_no_empty_space_changes_nothing() -> None:
    # A fresh grid is fully occupied: it has no exterior, and extraction is the plain one.
    grid = OccupancyGrid(resolution=16)
    assert not grid.exterior().any()
    sdf = sphere_sdf(0.5)
    plain = extract_mesh(sdf, 32)
    masked = extract_mesh(sdf, 32, outside=lambda x: grid.lookup(x, grid.exterior()))
    for a, b in zip(plain, masked):
        np.testing.assert_array_equal(a, b)


def test_decimate_reaches_the_target_and_stays_on_the_surface() -> None:
    vertices, faces = extract_mesh(sphere_sdf(0.5), 64)
    assert len(faces) > 10_000
    small_v, small_f = decimate(vertices, faces, 1000)
    assert 900 <= len(small_f) <= 1000 and small_f.dtype == np.int64 and small_v.dtype == vertices.dtype
    assert small_f.max() < len(small_v)
    # One-sided Hausdorff to the sphere from dense samples of the decimated surface: within 2 % of the
    # radius (its edges are 0.1 long: 20 %); the volume within 2 %, so it covers the sphere too.
    bary = np.random.default_rng(0).dirichlet(np.ones(3), size=(len(small_f), 20))
    samples = np.einsum("fsk,fkd->fsd", bary, small_v[small_f].astype(np.float64)).reshape(-1, 3)
    assert np.abs(np.linalg.norm(samples, axis=-1) - 0.5).max() < 0.01
    _, volume = area_and_volume(small_v, small_f)
    assert volume == pytest.approx(4 / 3 * np.pi * 0.5**3, rel=0.02)
    # A mesh with no more faces than the target is left as it is.
    same_v, same_f = decimate(small_v, small_f, 1000)
    assert same_v is small_v and np.array_equal(same_f, small_f)
