"""Mesh extraction from an SDF by marching cubes, and mesh clean-up.

Marching cubes: Lorensen & Cline, "Marching Cubes: A High Resolution 3D Surface Construction
Algorithm", SIGGRAPH 1987 (via PyMCubes). The bounding-sphere restriction follows NeuS
(Wang et al., NeurIPS 2021) / IDR (Yariv et al., NeurIPS 2020), whose scenes live in the unit sphere.
An optional ``outside`` predicate marks space known to be empty (e.g. what a renderer skips), where
the field's sign is not trusted.
"""
from __future__ import annotations

from typing import Callable

import fast_simplification
import mcubes
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import connected_components
import torch

SdfFn = Callable[[torch.Tensor], torch.Tensor]
RegionFn = Callable[[torch.Tensor], torch.Tensor]


def _empty_mesh() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)


def _sdf_grid(
    sdf_fn: SdfFn,
    lo: np.ndarray,
    hi: np.ndarray,
    resolution: int,
    radius: float,
    chunk: int,
    device: torch.device | str,
    outside: RegionFn | None = None,
) -> np.ndarray:
    """SDF on an (R, R, R) grid spanning the box [lo, hi] (3,), clipped to the sphere of `radius`.

    Grid points are generated chunk by chunk from flat indices, so at most `chunk` points exist at once.
    Points outside the sphere are made "outside": sdf = max(sdf, |x| - radius); so are points where
    ``outside(points)`` (P,) is true: sdf = |sdf|.
    """
    r = resolution
    values = np.empty(r**3, dtype=np.float32)
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=device)
    step_t = torch.as_tensor((hi - lo) / (r - 1), dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, r**3, chunk):
            idx = torch.arange(start, min(start + chunk, r**3), device=device)
            ijk = torch.stack([idx // (r * r), (idx // r) % r, idx % r], dim=-1)
            points = lo_t + ijk.to(torch.float32) * step_t
            sdf = sdf_fn(points).reshape(-1).to(torch.float32)
            if outside is not None:
                sdf = torch.where(outside(points), sdf.abs(), sdf)
            sdf = torch.maximum(sdf, points.norm(dim=-1) - radius)
            values[start : start + len(idx)] = sdf.cpu().numpy()
    return values.reshape(r, r, r)


def _march(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of an (R, R, R) grid spanning [lo, hi]: vertices (V, 3) float32, faces (F, 3) int64.

    PyMCubes orients triangles towards decreasing values (inward for an SDF), so faces are flipped to
    make normals point towards positive SDF (outward).
    """
    verts, faces = mcubes.marching_cubes(values, 0.0)
    if len(faces) == 0:
        return _empty_mesh()
    step = (hi - lo) / (values.shape[0] - 1)
    verts = (lo + verts * step).astype(np.float32)
    return verts, faces[:, [0, 2, 1]].astype(np.int64)


def extract_mesh(
    sdf_fn: SdfFn,
    resolution: int,
    radius: float = 1.0,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
    refine: bool = True,
    outside: RegionFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh of the zero level of `sdf_fn` inside the sphere of `radius`.

    Args:
        sdf_fn: (P, 3) -> (P,) or (P, 1) signed distance, negative inside; called under no_grad.
        resolution: grid points per axis (R).
        refine: first find the surface's bounding box on a half-resolution grid, then march at
            ``resolution`` on that (padded) box only.
        outside: (P, 3) -> (P,) bool, points known to be empty space; the SDF counts as positive
            there (|sdf|), so no surface is extracted in that space and one crossing into it is closed
            at its border. None: the whole sphere is trusted.

    Returns:
        vertices (V, 3) float32 in sdf_fn's frame and faces (F, 3) int64 with outward normals;
        both (0, 3) if there is no surface.
    """
    lo, hi = np.full(3, -radius), np.full(3, radius)
    first = max(32, resolution // 2) if refine else resolution
    verts, faces = _march(_sdf_grid(sdf_fn, lo, hi, first, radius, chunk, device, outside), lo, hi)
    if not refine or len(faces) == 0:
        return verts, faces
    pad = 2 * (hi - lo) / (first - 1)
    lo2 = np.maximum(verts.min(axis=0) - pad, lo)
    hi2 = np.minimum(verts.max(axis=0) + pad, hi)
    fine_verts, fine_faces = _march(_sdf_grid(sdf_fn, lo2, hi2, resolution, radius, chunk, device, outside), lo2, hi2)
    return (fine_verts, fine_faces) if len(fine_faces) else (verts, faces)


def largest_component(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the connected component (via shared vertices) with the most faces.

    Args:
        vertices: (V, 3); faces: (F, 3) int.

    Returns:
        vertices (V', 3) restricted to the used ones and faces (F', 3) reindexed into them.
    """
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return np.asarray(vertices)[:0], faces
    n = len(vertices)
    rows = faces.reshape(-1)
    cols = np.roll(faces, 1, axis=1).reshape(-1)
    graph = scipy.sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_labels = labels[faces[:, 0]]
    kept = faces[face_labels == np.bincount(face_labels).argmax()]
    used, inverse = np.unique(kept, return_inverse=True)
    return np.asarray(vertices)[used], inverse.reshape(-1, 3).astype(np.int64)


def decimate(vertices: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a mesh to at most ``target_faces`` faces by quadric edge collapse (Garland &
    Heckbert, "Surface Simplification Using Quadric Error Metrics", SIGGRAPH 1997, via
    fast-simplification); a mesh with no more faces is returned as it is.

    Args:
        vertices: (V, 3); faces: (F, 3) int.

    Returns:
        vertices (V', 3) of the input's dtype and faces (F', 3) int64.
    """
    vertices, faces = np.asarray(vertices), np.asarray(faces, dtype=np.int64)
    if len(faces) <= target_faces:
        return vertices, faces
    points, triangles = fast_simplification.simplify(vertices.astype(np.float64), faces, target_count=target_faces)
    return points.astype(vertices.dtype), triangles.astype(np.int64)
