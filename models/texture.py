"""Texture baking for exported meshes: a UV atlas (xatlas: Young, "xatlas", a port of Castaño's
thekla_atlas, https://github.com/jpcy/xatlas), texel rasterisation of the UV triangles, colours
queried at the texels' 3D points, and gutter dilation.

Texture convention (OBJ / trimesh): texel (row r, column c) of an (S, S) image has its centre at
``uv = ((c + 0.5) / S, 1 - (r + 0.5) / S)``; row 0 is the top of the image (v = 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import xatlas
from tqdm import tqdm

from models.mesh import decimate

ColorFn = Callable[[np.ndarray], np.ndarray]
# xatlas takes minutes on marching-cubes meshes beyond this many faces (and tens of seconds at it, on 2 CPU cores).
MAX_FACES = 50_000


@dataclass
class TexturedMesh:
    """A mesh with a UV atlas: vertices (V', 3) (those of the input, duplicated along the atlas's
    seams), faces (F, 3) into them, uv (V', 2) in [0, 1], image (S, S, 3) float colours."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    image: np.ndarray


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parametrise a mesh (V, 3), (F, 3) into one atlas of about ``size`` texels square with xatlas,
    charts ``padding`` texels apart. Returns source vertex ids (V',), faces (F, 3) into the new
    vertices and their uv (V', 2) in [0, 1] (v up, OBJ convention)."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding = size, padding
    atlas.generate(pack_options=pack)
    vmap, new_faces, uv = atlas[0]
    # xatlas's v runs down the atlas (image rows); OBJ's runs up.
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1)
    return vmap.astype(np.int64), new_faces.astype(np.int64), uv.astype(np.float64)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, margin: float = 1.5,
                 max_pairs: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which triangle covers each texel of an (size, size) texture, and where.

    A texel belongs to the triangle (in uv) nearest to its centre, if that lies within ``margin``
    texels (conservative rasterisation: texels just outside a chart's border get the border
    triangle's plane extended, so bilinear lookups at the border read true colours).

    Args:
        uv: (V, 2) in [0, 1]; faces: (F, 3) int.

    Returns:
        texels (T,) flat indices ``row * size + column``, face ids (T,), barycentric weights (T, 3)
        (unclamped: negative outside the triangle; they sum to 1).
    """
    pix = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], -1)[faces]  # (F, 3, 2) in texel units
    lo = np.clip(np.floor(pix.min(1) - margin - 0.5), 0, size - 1).astype(np.int64)
    hi = np.clip(np.ceil(pix.max(1) + margin - 0.5), 0, size - 1).astype(np.int64)
    extent = hi - lo + 1  # (F, 2) bounding boxes of texel centres
    counts = extent[:, 0] * extent[:, 1]
    best = np.full(size * size, np.inf)
    best_face = np.full(size * size, -1, np.int64)
    best_bary = np.zeros((size * size, 3))
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):  # blocks of faces with at most max_pairs candidate texels
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + max_pairs, side="right")))
        face = np.repeat(np.arange(start, stop), counts[start:stop])
        local = np.arange(len(face)) - np.repeat(ends[start:stop] - counts[start:stop], counts[start:stop])
        col = lo[face, 0] + local % extent[face, 0]
        row = lo[face, 1] + local // extent[face, 0]
        bary, outside = _barycentric(pix[face], np.stack([col + 0.5, row + 0.5], -1))
        keep = outside <= margin
        face, bary, outside, texel = face[keep], bary[keep], outside[keep], (row * size + col)[keep]
        order = np.lexsort((outside, texel))
        first = np.ones(len(order), bool)
        first[1:] = texel[order][1:] != texel[order][:-1]
        pick = order[first]
        better = outside[pick] < best[texel[pick]]
        target = texel[pick][better]
        best[target], best_face[target], best_bary[target] = outside[pick][better], face[pick][better], bary[pick][better]
        start = stop
    texels = np.nonzero(best_face >= 0)[0]
    return texels, best_face[texels], best_bary[texels]


def _barycentric(tri: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric weights (N, 3) of points p (N, 2) in triangles (N, 3, 2), and each point's
    distance from its triangle (N,) (0 inside; inf for degenerate triangles)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]

    def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

    def to_segment(start: np.ndarray, end: np.ndarray) -> np.ndarray:
        edge = end - start
        t = np.clip(((p - start) * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-24), 0.0, 1.0)
        return np.linalg.norm(p - start - t[:, None] * edge, axis=-1)

    area = cross(b - a, c - a)  # twice the signed area
    degenerate = np.abs(area) <= 1e-12
    bary = np.stack([cross(b - p, c - p), cross(c - p, a - p), cross(a - p, b - p)], -1) / np.where(degenerate, 1.0, area)[:, None]
    inside = (bary >= 0).all(-1)
    distance = np.where(inside, 0.0, np.minimum(np.minimum(to_segment(a, b), to_segment(b, c)), to_segment(c, a)))
    return bary, np.where(degenerate, np.inf, distance)


def dilate(image: np.ndarray, filled: np.ndarray, iterations: int) -> np.ndarray:
    """Grow the filled texels of ``image`` (S, S, C) by ``iterations`` rings: each empty texel next
    to filled ones (8-neighbourhood) takes their mean, so seams do not bleed a background colour
    under bilinear or mipmapped lookups. Texels still empty after that take the mean filled colour.

    Args:
        filled: (S, S) bool. Returns a new (S, S, C) image.
    """
    image, filled = image.copy(), filled.copy()
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for _ in range(iterations):
        padded = np.pad(image * filled[..., None], ((1, 1), (1, 1), (0, 0)))
        weight = np.pad(filled.astype(np.float64), 1)
        h, w = filled.shape
        total = sum(padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in shifts)
        count = sum(weight[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in shifts)
        grow = ~filled & (count > 0)
        if not grow.any():
            break
        image[grow] = total[grow] / count[grow][:, None]
        filled |= grow
    if filled.any():
        image[~filled] = image[filled].mean(0)
    return image


def bake_texture(vertices: np.ndarray, faces: np.ndarray, color_fn: ColorFn, size: int = 1024,
                 dilation: int = 4, max_faces: int = MAX_FACES) -> TexturedMesh:
    """Bake a colour field into a UV texture of a mesh, first decimated to ``max_faces`` faces.

    Each covered texel's 3D point is the barycentric mix of its triangle's vertices (extended past
    the triangle's edges within the rasteriser's margin); ``color_fn`` maps points (N, 3) to colours
    (N, 3). Gutters are then dilated ``dilation`` texels.

    Args:
        vertices: (V, 3); faces: (F, 3) int; size: texture side in texels.

    A progress bar (on stderr) names each stage as it starts: decimation, UV atlas, rasterisation, colours, gutters.
    """
    with tqdm(total=5, desc="texture baking", unit="stage") as bar:
        def stage(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(0 if name == "decimation" else 1)

        stage("decimation")
        vertices, faces = decimate(vertices, faces, max_faces)
        stage("UV atlas")
        source, new_faces, uv = uv_atlas(vertices, faces, size)
        new_vertices = np.asarray(vertices, dtype=np.float64)[source]
        stage("rasterisation")
        texels, face_ids, bary = rasterize_uv(uv, new_faces, size)
        points = (new_vertices[new_faces[face_ids]] * bary[..., None]).sum(1)
        stage("colours")
        image = np.zeros((size * size, 3))
        image[texels] = np.asarray(color_fn(points), dtype=np.float64)
        filled = np.zeros(size * size, bool)
        filled[texels] = True
        stage("gutters")
        image = dilate(image.reshape(size, size, 3), filled.reshape(size, size), dilation)
        bar.update(1)
    return TexturedMesh(new_vertices, new_faces, uv, image)
