"""Tests for surface sampling, point-to-mesh distance, Chamfer, mask culling, PSNR and IoU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from scipy.spatial import cKDTree

from models.metrics import (
    chamfer_distance,
    downsample_points,
    dtu_official_distances,
    point_to_mesh_distance,
    psnr,
    sample_surface,
    sample_surface_grid,
    silhouette_iou,
    visible_in_masks,
)


def square(x0: float, x1: float, y0: float, y1: float, z: float = 0.0, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned square patch in the plane z, split into an n x n grid of 2n^2 triangles."""
    xs, ys = np.linspace(x0, x1, n + 1), np.linspace(y0, y1, n + 1)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    vertices = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], axis=1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return vertices, faces


def test_sample_surface_is_on_faces_and_area_weighted() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [0, 3, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 3, 4]])  # areas 0.5 and 4.5, both in z = 0
    points, ids = sample_surface(vertices, faces, 20_000, seed=1)
    assert points.shape == (20_000, 3) and ids.shape == (20_000,)
    assert np.all(points[:, 2] == 0) and np.all(points[:, :2] >= 0)
    assert np.all(points[:, :2].sum(1) <= np.where(ids == 0, 1.0, 3.0) + 1e-12)
    assert np.mean(ids == 0) == pytest.approx(0.1, abs=0.01)
    # Uniform within a triangle: the sub-triangle x + y < 1/2 holds a quarter of the first face.
    assert np.mean(points[ids == 0, :2].sum(1) < 0.5) == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ((0.2, 0.2, 3.0), 3.0),  # face interior
        ((-1.0, -1.0, 2.0), np.sqrt(6.0)),  # vertex A
        ((2.0, -1.0, 0.0), np.sqrt(2.0)),  # vertex B
        ((-1.0, 2.0, 0.0), np.sqrt(2.0)),  # vertex C
        ((0.5, -1.0, 0.0), 1.0),  # edge AB
        ((-1.0, 0.5, 1.0), np.sqrt(2.0)),  # edge AC
        ((1.0, 1.0, 0.0), np.sqrt(0.5)),  # edge BC
    ],
)
def test_point_to_triangle_regions(point: tuple[float, float, float], expected: float) -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    d = point_to_mesh_distance(np.array([point]), vertices, np.array([[0, 1, 2]]), n_samples=100)
    assert d[0] == pytest.approx(expected, rel=1e-12)


def test_point_to_mesh_distance_plane_and_sphere() -> None:
    rng = np.random.default_rng(0)
    vertices, faces = square(-1, 1, -1, 1, n=8)
    above = np.column_stack([rng.uniform(-1, 1, (500, 2)), rng.normal(size=500)])
    np.testing.assert_allclose(point_to_mesh_distance(above, vertices, faces, 20_000), np.abs(above[:, 2]), atol=1e-12)
    beyond = np.array([[2.0, 0.3, 1.0], [-1.5, -1.5, 0.0]])  # past an edge / a corner of the patch
    np.testing.assert_allclose(point_to_mesh_distance(beyond, vertices, faces), [np.sqrt(2.0), np.sqrt(0.5)])

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    directions = rng.normal(size=(1000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = rng.uniform(0.5, 2.0, (1000, 1))
    d = point_to_mesh_distance(directions * radii, sphere.vertices, sphere.faces, 50_000)
    np.testing.assert_allclose(d, np.abs(radii[:, 0] - 1.0), atol=2e-3)  # faceting error of the icosphere


def test_point_to_mesh_distance_bounded_by_max_dist() -> None:
    rng = np.random.default_rng(1)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    directions = rng.normal(size=(2000, 3))
    points = directions / np.linalg.norm(directions, axis=1, keepdims=True) * rng.uniform(0.0, 4.0, (2000, 1))
    exact = point_to_mesh_distance(points, sphere.vertices, sphere.faces, 20_000)
    bounded = point_to_mesh_distance(points, sphere.vertices, sphere.faces, 20_000, max_dist=1.5)
    near = exact <= 1.5
    assert 0.2 < near.mean() < 0.9
    np.testing.assert_allclose(bounded[near], exact[near], atol=1e-12)
    assert np.all((bounded[~near] == exact[~near]) | np.isinf(bounded[~near]))
    # a prediction collapsed to a blob far from the reference (a diverged run) scores max_dist
    blob = sphere.vertices * 0.01 + 500.0
    result = chamfer_distance(blob, sphere.faces, sphere.vertices * 100, sphere.faces, n_points=20_000, max_dist=20.0)
    assert result == pytest.approx({"accuracy": 20.0, "completeness": 20.0, "chamfer": 20.0})


def test_points_on_the_mesh_have_zero_distance() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=100.0)
    points, _ = sample_surface(sphere.vertices, sphere.faces, 20_000, seed=7)
    d = point_to_mesh_distance(points, sphere.vertices, sphere.faces, 50_000)
    assert d.max() <= 1e-6 * 100.0


def test_chamfer_of_mesh_with_itself_is_zero() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=100.0)
    result = chamfer_distance(sphere.vertices, sphere.faces, sphere.vertices, sphere.faces, n_points=50_000)
    assert set(result) == {"accuracy", "completeness", "chamfer"}
    assert result["chamfer"] < 0.01


def test_chamfer_of_shifted_plane_equals_shift() -> None:
    vertices, faces = square(-100, 100, -100, 100, n=4)
    shifted = vertices + [0.0, 0.0, 3.0]
    result = chamfer_distance(shifted, faces, vertices, faces, n_points=50_000)
    for key in ("accuracy", "completeness", "chamfer"):
        assert result[key] == pytest.approx(3.0, rel=0.01)
    clipped = chamfer_distance(vertices + [0.0, 0.0, 30.0], faces, vertices, faces, n_points=10_000, max_dist=20.0)
    assert clipped == pytest.approx({"accuracy": 20.0, "completeness": 20.0, "chamfer": 20.0})


def test_chamfer_partial_prediction_is_asymmetric() -> None:
    gt_v, gt_f = square(0, 200, 0, 200, n=4)
    pred_v, pred_f = square(0, 100, 0, 200, n=4)
    result = chamfer_distance(pred_v, pred_f, gt_v, gt_f, n_points=50_000, max_dist=1000.0)
    assert result["accuracy"] < 1e-6
    assert result["completeness"] == pytest.approx(25.0, rel=0.02)  # half the GT is 0..100 away, mean 50
    capped = chamfer_distance(pred_v, pred_f, gt_v, gt_f, n_points=20_000, max_dist=20.0)
    assert capped["completeness"] == pytest.approx(0.5 * (10.0 * 0.2 + 20.0 * 0.8), rel=0.02)


def test_chamfer_against_point_cloud_and_culling() -> None:
    gt_v, gt_f = square(0, 100, 0, 100, n=4)
    gt_points, _ = sample_surface(gt_v, gt_f, 50_000, seed=3)
    pred_v, pred_f = square(0, 200, 0, 100, z=2.0, n=4)  # twice as large as the GT, lifted by 2
    result = chamfer_distance(pred_v, pred_f, gt_points, None, n_points=50_000, max_dist=1000.0)
    assert result["completeness"] == pytest.approx(2.0, rel=0.01)
    assert result["accuracy"] > 20.0  # half of the prediction is 0..100 away from the GT
    culled = chamfer_distance(
        pred_v, pred_f, gt_points, None, n_points=50_000, max_dist=1000.0, pred_keep=lambda p: p[:, 0] < 100
    )
    assert culled["accuracy"] == pytest.approx(2.0, rel=0.02)
    assert culled["completeness"] == result["completeness"]


def test_empty_prediction_scores_max_dist() -> None:
    gt_v, gt_f = square(0, 1, 0, 1)
    result = chamfer_distance(np.zeros((0, 3)), np.zeros((0, 3), int), gt_v, gt_f, max_dist=5.0)
    assert result == {"accuracy": 5.0, "completeness": 5.0, "chamfer": 5.0}


def test_sample_surface_grid_is_on_the_mesh_and_dense() -> None:
    vertices, faces = square(0, 10, 0, 5, n=3)
    points = sample_surface_grid(vertices, faces, 0.2)
    assert np.all(points[:len(vertices)] == vertices)
    assert np.abs(points[:, 2]).max() == 0 and points[:, :2].min() >= 0 and points[:, 0].max() <= 10 and points[:, 1].max() <= 5
    assert 50 / 0.04 * 0.8 < len(points) < 50 / 0.04 * 1.5  # about one point per 0.2 x 0.2 cell
    probes, _ = sample_surface(vertices, faces, 20_000, seed=1)
    assert cKDTree(points).query(probes)[0].max() < 0.3  # no holes


def test_downsample_points_spacing_and_cover() -> None:
    points = np.random.default_rng(0).random((20_000, 3)) * [10.0, 10.0, 1.0]
    kept = downsample_points(points, 0.5)
    assert 100 < len(kept) < len(points)
    assert cKDTree(kept).query(kept, k=2)[0][:, 1].min() > 0.5  # kept points are farther apart than min_distance
    assert cKDTree(kept).query(points)[0].max() <= 0.5  # every input point is within min_distance of a kept one
    assert cKDTree(points).query(kept)[0].max() == 0  # kept points are input points


def dtu_scene() -> dict[str, np.ndarray | float]:
    """A fabricated DTU evaluation: a 40 mm volume at 1 mm voxels, observed where x < 5.5 (voxels 0..5), and the
    ground plane z = 0.5; STL points A, B above it, C below it and D above it far from everything."""
    obs_mask = np.zeros((41, 41, 41), dtype=bool)
    obs_mask[:6] = True
    stl = np.array([[2, 2, 1], [8, 8, 1], [20, 20, 0], [38, 38, 5]], dtype=float)
    return {"stl_points": stl, "obs_mask": obs_mask, "bb": np.array([[0, 0, 0], [40, 40, 40]], dtype=float),
            "res": 1.0, "plane": np.array([0, 0, 1, -0.5])}


def test_dtu_official_distances_mask_plane_and_exclusion() -> None:
    pred = np.array([[2, 2, 2],     # observed: 1 from A
                     [8, 8, 3],     # not observed (x = 8): 2 from B, left out of accuracy
                     [2, 30, 1]],   # observed, 20.6 from C, its nearest: over 20, excluded (not clipped to 20)
                    dtype=float)
    result = dtu_official_distances(pred, **dtu_scene(), max_dist=20.0)
    assert result["accuracy"] == pytest.approx(1.0)
    # A -> 1, B -> 2 (to the unobserved point: completeness uses every prediction point); C (17.2 from the
    # prediction) is below the plane and D (42 away) is excluded.
    assert result["completeness"] == pytest.approx(1.5)
    assert result["chamfer"] == pytest.approx(1.25)
    clipped_if_not_excluded = dtu_official_distances(pred, **dtu_scene(), max_dist=21.0)
    assert clipped_if_not_excluded["accuracy"] == pytest.approx((1.0 + np.sqrt(18**2 + 10**2 + 1)) / 2)


def test_dtu_official_distances_nearest_voxel_and_empty_sides() -> None:
    inside = dtu_official_distances(np.array([[5.4, 2.0, 1.0]]), **dtu_scene())  # nearest voxel x = 5: observed
    assert inside["accuracy"] == pytest.approx(3.4)
    outside = dtu_official_distances(np.array([[5.6, 2.0, 1.0]]), **dtu_scene(), max_dist=20.0)  # voxel 6: not
    assert outside["accuracy"] == 20.0 and outside["completeness"] == pytest.approx((3.6 + np.hypot(2.4, 6.0)) / 2)  # A, B
    assert dtu_official_distances(np.zeros((0, 3)), **dtu_scene(), max_dist=7.0) == {
        "accuracy": 7.0, "completeness": 7.0, "chamfer": 7.0}


def test_visible_in_masks() -> None:
    k = np.array([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    c2w = np.eye(4)[None]  # camera at the origin looking along +z
    mask = np.zeros((1, 100, 100), dtype=bool)
    mask[0, 40:60, 40:60] = True
    points = np.array(
        [
            [0.0, 0.0, 5.0],  # pixel (50, 50): in the mask
            [0.75, 0.0, 5.0],  # u = 65: outside the mask, 5 px beyond its edge
            [0.0, 0.0, -5.0],  # behind the camera: not seen
            [20.0, 0.0, 5.0],  # projects outside the image: not seen
            [-0.5, -0.5, 5.0],  # u = v = 40 exactly: the mask's first pixel
            [-0.5001, 0.0, 5.0],  # u just below 40: pixel 39, outside
        ]
    )
    keep = visible_in_masks(points, k[None], c2w, mask)
    np.testing.assert_array_equal(keep, [True, False, True, True, True, False])
    assert visible_in_masks(points, k[None], c2w, mask, dilation=5).tolist() == [True, False, True, True, True, True]
    assert visible_in_masks(points, k[None], c2w, mask, dilation=6).all()

    # A second view, from the side, whose mask excludes the first point removes it.
    side = np.eye(4)  # at (10, 0, 5) looking along -x: columns right, down, forward
    side[:3, :3] = [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    side[:3, 3] = [10.0, 0.0, 5.0]
    side_c2w = np.stack([np.eye(4), side])
    side_mask = np.concatenate([np.ones((1, 100, 100), bool), np.zeros((1, 100, 100), bool)])
    keep = visible_in_masks(points[:1], np.stack([k, k]), side_c2w, side_mask)
    assert keep.tolist() == [False]
    assert visible_in_masks(points[:1], np.stack([k, k]), torch.tensor(side_c2w), ~side_mask).tolist() == [False]


def test_psnr() -> None:
    image = np.random.default_rng(0).uniform(size=(8, 8, 3))
    assert psnr(image, image) == float("inf")
    assert psnr(image, image + 0.1) == pytest.approx(20.0)
    assert psnr(torch.tensor(image), torch.tensor(image + 0.01)) == pytest.approx(40.0)
    noisy = image.copy()
    noisy[:4] += 0.5
    mask = np.zeros((8, 8), dtype=bool)
    mask[4:] = True
    assert psnr(noisy, image, mask) == float("inf")
    assert psnr(noisy, image, ~mask) == pytest.approx(-10 * np.log10(0.25))


def test_silhouette_iou() -> None:
    opacity = np.array([0.9, 0.6, 0.2, 0.0])
    mask = np.array([True, False, True, False])
    assert silhouette_iou(opacity, mask) == pytest.approx(1 / 3)
    assert silhouette_iou(torch.tensor(opacity), torch.tensor(mask), threshold=0.1) == pytest.approx(2 / 3)
    assert silhouette_iou(np.zeros(4), np.zeros(4, bool)) == 1.0
