"""Evaluation metrics: DTU-style Chamfer distance (masked, or DTU's official protocol), mask culling, PSNR and silhouette IoU.

Chamfer accuracy / completeness follow the DTU MVS benchmark (Aanæs et al., "Large-Scale Data for
Multiple-View Stereopsis", IJCV 2016) as used by IDR / NeuS; mask culling follows NeuS
(Wang et al., NeurIPS 2021).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.spatial import cKDTree
import torch

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted uniform samples on a triangle mesh.

    Args:
        vertices: (V, 3); faces: (F, 3) int, with positive total area.

    Returns:
        points (n, 3) float64 and the face id of each, (n,) int64.
    """
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces, dtype=np.int64)]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    cdf = np.cumsum(areas)
    rng = np.random.default_rng(seed)
    face_ids = np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)
    # Uniform barycentrics by the square-root trick (Osada et al., "Shape Distributions", TOG 2002).
    r1, r2 = np.sqrt(rng.random((n, 1))), rng.random((n, 1))
    t = tri[face_ids]
    points = (1 - r1) * t[:, 0] + r1 * (1 - r2) * t[:, 1] + r1 * r2 * t[:, 2]
    return points, face_ids.astype(np.int64)


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest points on triangles (a, b, c) to points p, all (..., 3) float64.

    Voronoi-region method of Ericson, "Real-Time Collision Detection" (2005), section 5.1.5,
    vectorised: regions are tested in Ericson's order by applying them in reverse with np.where.
    """

    def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("...i,...i->...", x, y)[..., None]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return num / np.where(den == 0, 1.0, den)

    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c
    d1, d2, d3, d4, d5, d6 = dot(ab, ap), dot(ac, ap), dot(ab, bp), dot(ac, bp), dot(ab, cp), dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    den = va + vb + vc
    out = a + ab * ratio(vb, den) + ac * ratio(vc, den)  # interior (face region)
    regions = [  # lowest priority first
        ((va <= 0) & (d4 >= d3) & (d5 >= d6), b + (c - b) * ratio(d4 - d3, (d4 - d3) + (d5 - d6))),  # edge BC
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * ratio(d2, d2 - d6)),  # edge AC
        ((d6 >= 0) & (d5 <= d6), c),  # vertex C
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * ratio(d1, d1 - d3)),  # edge AB
        ((d3 >= 0) & (d4 <= d3), b),  # vertex B
        ((d1 <= 0) & (d2 <= 0), a),  # vertex A
    ]
    for mask, point in regions:
        out = np.where(mask, point, out)
    return out


def _incident_faces(faces: np.ndarray, n_vertices: int, cap: int = 16) -> np.ndarray:
    """(V, M) ids of the faces around each vertex (M = max valence, at most `cap`), rows padded by repetition."""
    flat = faces.reshape(-1)
    order = np.argsort(flat, kind="stable")
    vertex_ids, face_ids = flat[order], order // 3
    count = np.bincount(vertex_ids, minlength=n_vertices)
    first = np.cumsum(count) - count
    rank = np.arange(len(flat)) - first[vertex_ids]
    table = np.repeat(face_ids[np.minimum(first, len(flat) - 1), None], min(int(count.max()), cap), axis=1)
    fits = rank < table.shape[1]
    table[vertex_ids[fits], rank[fits]] = face_ids[fits]
    return table


def _triangle_distances(p: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (B, k) and closest points (B, k, 3) from points p (B, 3) to triangles tri (B, k, 3, 3)."""
    closest = _closest_on_triangles(p[:, None], tri[:, :, 0], tri[:, :, 1], tri[:, :, 2])
    return np.linalg.norm(closest - p[:, None], axis=-1), closest


def point_to_mesh_distance(
    points: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    n_samples: int = 200_000,
    k: int = 8,
    seed: int = 0,
    batch: int = 32768,
    max_dist: float = float("inf"),
) -> np.ndarray:
    """Distance from each point to a triangle mesh.

    Candidate triangles are those owning the k nearest of `n_samples` area-weighted surface samples
    plus three interior points per face (barycentric (2/3, 1/6, 1/6) and permutations, so every face,
    however small, is represented), plus the faces around the vertex of the best candidate nearest to
    its closest point (this catches the true face when the best point found lies on an edge or corner
    shared with it). Exact point-to-triangle distances are evaluated for all candidates and the
    minimum is kept: exact whenever the closest triangle is a candidate, otherwise an upper bound.
    Points farther than ``max_dist`` from the mesh may get ``inf`` instead: the candidate search stops
    at ``max_dist`` plus the longest edge (where every face within ``max_dist`` has a candidate point),
    which keeps it fast where the mesh is far from the points (e.g. collapsed to a blob).

    Args:
        points: (P, 3); vertices: (V, 3); faces: (F, 3) int, non-empty.

    Returns:
        (P,) float64 distances.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    v = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    samples, sample_faces = sample_surface(v, faces, n_samples, seed)
    tri = v[faces]
    corners = (0.5 * tri + 0.5 * tri.mean(axis=1, keepdims=True)).transpose(1, 0, 2).reshape(-1, 3)
    tree = cKDTree(np.concatenate([samples, corners]))
    owner = np.concatenate([sample_faces, np.tile(np.arange(len(faces)), 3)])
    ring = _incident_faces(faces, len(v))
    k = min(k, tree.n)
    edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=-1)
    bound = max_dist + float(edges.max()) if np.isfinite(max_dist) else np.inf
    out = np.full(len(points), np.inf)
    for start in range(0, len(points), batch):
        chunk = points[start : start + batch]
        nn = tree.query(chunk, k=k, distance_upper_bound=bound, workers=-1)[1].reshape(-1, k)
        found = nn[:, 0] < tree.n
        nn = np.where(nn < tree.n, nn, nn[:, :1])  # missing neighbours: repeat the nearest
        p, nn = chunk[found], nn[found]
        rows = np.arange(len(p))
        candidates = owner[nn]
        dist, closest = _triangle_distances(p, tri[candidates])
        best = dist.argmin(axis=1)
        best_face = faces[candidates[rows, best]]  # (B, 3)
        corner = np.linalg.norm(v[best_face] - closest[rows, best, None], axis=-1).argmin(axis=1)
        ring_dist, _ = _triangle_distances(p, tri[ring[best_face[rows, corner]]])
        out[start : start + batch][found] = np.minimum(dist[rows, best], ring_dist.min(axis=1))
    return out


def chamfer_distance(
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray | None,
    n_points: int = 200_000,
    max_dist: float = 20.0,
    seed: int = 0,
    pred_keep: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """DTU-style accuracy, completeness and Chamfer distance (their mean).

    accuracy: mean distance from `n_points` samples on the prediction (optionally culled by
    `pred_keep(points (P, 3)) -> (P,) bool`) to the GT mesh, or to the nearest GT point when
    `gt_faces` is None (or empty). completeness: mean distance from GT samples (or the GT point
    cloud itself, so downsample large clouds first) to the prediction mesh. Each distance is clipped
    at `max_dist` (20 mm on DTU), so an empty prediction scores `max_dist` everywhere.

    Args:
        pred_vertices: (V, 3); pred_faces: (F, 3); gt_vertices: (G, 3); gt_faces: (H, 3) or None.
    """
    if len(pred_faces) == 0:
        return {"accuracy": float(max_dist), "completeness": float(max_dist), "chamfer": float(max_dist)}
    pred_points, _ = sample_surface(pred_vertices, pred_faces, n_points, seed)
    if pred_keep is not None:
        pred_points = pred_points[np.asarray(pred_keep(pred_points), dtype=bool)]
    if gt_faces is None or len(gt_faces) == 0:
        gt_points = np.asarray(gt_vertices, dtype=np.float64)
        to_gt = cKDTree(gt_points).query(pred_points, distance_upper_bound=max_dist, workers=-1)[0]
    else:
        gt_points, _ = sample_surface(gt_vertices, gt_faces, n_points, seed + 1)
        to_gt = point_to_mesh_distance(pred_points, gt_vertices, gt_faces, n_points, seed=seed + 2, max_dist=max_dist)
    to_pred = point_to_mesh_distance(gt_points, pred_vertices, pred_faces, n_points, seed=seed + 3, max_dist=max_dist)
    accuracy = float(np.minimum(to_gt, max_dist).mean()) if len(to_gt) else float(max_dist)
    completeness = float(np.minimum(to_pred, max_dist).mean())
    return {"accuracy": accuracy, "completeness": completeness, "chamfer": 0.5 * (accuracy + completeness)}


def sample_surface_grid(vertices: np.ndarray, faces: np.ndarray, spacing: float, budget: int = 2_000_000) -> np.ndarray:
    """Dense deterministic samples of a mesh, the DTU evaluation's: its vertices plus, in each triangle
    (a, b, c), the grid points a + (i + 1/2)/n1 (b - a) + (j + 1/2)/n2 (c - a) inside it, with the
    largest n1, n2 whose grid cells are at least ``spacing``^2 in area and as long on both sides
    (relative to the edges). Triangles too small for one cell contribute their vertices only.
    ``budget`` bounds the candidate points held at once.

    Args:
        vertices: (V, 3); faces: (F, 3) int.

    Returns:
        (P, 3) float64 points, P >= V.
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    tri = v[np.asarray(faces, dtype=np.int64).reshape(-1, 3)]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    l1, l2 = np.linalg.norm(e1, axis=-1), np.linalg.norm(e2, axis=-1)
    area2 = np.linalg.norm(np.cross(e1, e2), axis=-1)
    shrink = np.sqrt(np.divide(area2, l1 * l2, out=np.zeros_like(area2), where=area2 > 0)) / spacing  # sqrt(sin angle)
    n1, n2 = np.floor(l1 * shrink).astype(np.int64), np.floor(l2 * shrink).astype(np.int64)
    ids = np.flatnonzero((n1 > 0) & (n2 > 0))
    counts = (n1[ids] + 1) * (n2[ids] + 1)
    ends = np.cumsum(counts)
    out, start = [v], 0
    while start < len(ids):
        stop = max(int(np.searchsorted(ends, ends[start] - counts[start] + budget, side="right")), start + 1)
        chunk, count = ids[start:stop], counts[start:stop]
        owner = np.repeat(np.arange(len(chunk)), count)
        local = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        f = chunk[owner]
        u = (local // (n2[f] + 1) + 0.5) / n1[f]
        w = (local % (n2[f] + 1) + 0.5) / n2[f]
        inside = u + w < 1
        f, u, w = f[inside], u[inside, None], w[inside, None]
        out.append(tri[f, 0] + u * e1[f] + w * e2[f])
        start = stop
    return np.concatenate(out)


def downsample_points(points: np.ndarray, min_distance: float, seed: int = 0) -> np.ndarray:
    """Greedy radius filter (the DTU evaluation's downsampling): visit the points in a random order
    and keep each one that no kept point lies within ``min_distance`` of. Kept points are more than
    ``min_distance`` apart, and every input point lies within ``min_distance`` of a kept one.

    Args:
        points: (P, 3).

    Returns:
        (K, 3) float64, the kept points in their input order.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    order = np.random.default_rng(seed).permutation(len(points))
    pairs = cKDTree(points[order]).query_pairs(min_distance, output_type="ndarray")  # (M, 2): i < j, |pi - pj| <= d
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    first, start = np.unique(pairs[:, 0], return_index=True)
    keep = np.ones(len(points), dtype=bool)
    for i, a, b in zip(first.tolist(), start.tolist(), [*start[1:].tolist(), len(pairs)]):
        if keep[i]:  # visited in order: a kept point drops its later neighbours
            keep[pairs[a:b, 1]] = False
    return points[np.sort(order[keep])]


def dtu_official_distances(
    pred_points: np.ndarray,
    stl_points: np.ndarray,
    obs_mask: np.ndarray,
    bb: np.ndarray,
    res: float,
    plane: np.ndarray,
    max_dist: float = 20.0,
) -> dict[str, float]:
    """Accuracy, completeness and Chamfer (their mean) by the official DTU MVS evaluation (Aanæs et
    al., IJCV 2016; its MATLAB code and the DTUeval-python port used by NeuS).

    accuracy: mean distance from the prediction points inside the observation mask to the nearest
    STL point; a point is inside when its nearest voxel, round((p - bb[0]) / res), lies in the volume
    and is set. completeness: mean distance from the STL points above the ground plane
    ([p, 1] . plane > 0) to the nearest prediction point (all of them, masked or not). Distances of
    ``max_dist`` or more are excluded from the means, not clipped; a side with no distance left
    scores ``max_dist``.

    Args:
        pred_points: (P, 3) prediction samples, downsampled (:func:`downsample_points`, 0.2 mm);
        stl_points: (S, 3); obs_mask: (X, Y, Z) bool; bb: (2, 3) min and max corners; res: voxel size;
        plane: (4,).
    """
    pred = np.asarray(pred_points, dtype=np.float64).reshape(-1, 3)
    stl = np.asarray(stl_points, dtype=np.float64).reshape(-1, 3)
    obs_mask = np.asarray(obs_mask, dtype=bool)
    voxel = np.floor((pred - np.asarray(bb, dtype=np.float64).reshape(2, 3)[0]) / res + 0.5).astype(np.int64)
    in_volume = np.all((voxel >= 0) & (voxel < obs_mask.shape), axis=1)
    in_obs = np.zeros(len(pred), dtype=bool)
    in_obs[in_volume] = obs_mask[tuple(voxel[in_volume].T)]
    plane = np.asarray(plane, dtype=np.float64).reshape(4)
    above = stl @ plane[:3] + plane[3] > 0

    def mean_below(sources: np.ndarray, targets: np.ndarray) -> float:
        if len(sources) == 0 or len(targets) == 0:
            return float(max_dist)
        dist = cKDTree(targets).query(sources, distance_upper_bound=max_dist, workers=-1)[0]
        dist = dist[dist < max_dist]
        return float(dist.mean()) if len(dist) else float(max_dist)

    accuracy, completeness = mean_below(pred[in_obs], stl), mean_below(stl[above], pred)
    return {"accuracy": accuracy, "completeness": completeness, "chamfer": 0.5 * (accuracy + completeness)}


def visible_in_masks(
    points: np.ndarray, intrinsics: np.ndarray, c2w: np.ndarray, masks: np.ndarray, dilation: int = 0
) -> np.ndarray:
    """NeuS DTU culling: keep a point unless some view sees it outside that view's (dilated) mask.

    A view "sees" a point if it is in front of the camera and projects inside the image (OpenCV
    convention: x right, y down, z forward; pixel (i, j) covers [j, j+1) x [i, i+1)).

    Args:
        points: (P, 3) world points; intrinsics: (N, 3, 3); c2w: (N, 4, 4); masks: (N, H, W) bool.
        dilation: masks are dilated by this many pixels (square structuring element).

    Returns:
        (P,) bool keep mask.
    """
    points = _numpy(points).astype(np.float64)
    intrinsics, c2w, masks = _numpy(intrinsics).astype(np.float64), _numpy(c2w).astype(np.float64), _numpy(masks)
    h, w = masks.shape[1:]
    keep = np.ones(len(points), dtype=bool)
    for k_mat, pose, mask in zip(intrinsics, c2w, masks.astype(bool)):
        if dilation > 0:
            mask = binary_dilation(mask, structure=np.ones((3, 3), dtype=bool), iterations=dilation)
        cam = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> camera: R^T (x - t)
        front = cam[:, 2] > 0
        uvw = cam[front] @ k_mat.T
        col = np.floor(uvw[:, 0] / uvw[:, 2])
        row = np.floor(uvw[:, 1] / uvw[:, 2])
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        seen = np.flatnonzero(front)[inside]
        outside_mask = ~mask[row[inside].astype(np.int64), col[inside].astype(np.int64)]
        keep[seen[outside_mask]] = False
    return keep


def psnr(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of colours in [0, 1]; inf for identical images.

    Args:
        pred, target: (..., C); mask: (...) bool selecting pixels, or None for all.
    """
    err = (_numpy(pred).astype(np.float64) - _numpy(target).astype(np.float64)) ** 2
    if mask is not None:
        err = err[_numpy(mask).astype(bool)]
    mse = float(err.mean())
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def silhouette_iou(opacity: ArrayLike, mask: ArrayLike, threshold: float = 0.5) -> float:
    """Intersection over union of `opacity > threshold` and `mask > 0.5` (bool/0-1/0-255; equal shapes).

    Returns 1.0 when both silhouettes are empty.
    """
    pred = _numpy(opacity) > threshold
    gt = _numpy(mask) > 0.5
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)
