"""Mesh files: atomic saving of extracted meshes and loading of reference (GT) geometry."""
from __future__ import annotations

import os
from pathlib import Path
import secrets

import numpy as np
import trimesh

from datasets.errors import InputError


def _uint8_colors(colors: np.ndarray) -> np.ndarray:
    """(V, 3|4) colours as uint8: uint8 input is kept, floats in [0, 1] are scaled and rounded."""
    colors = np.asarray(colors)
    if colors.dtype == np.uint8:
        return colors
    return np.round(np.clip(colors.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Write a mesh atomically; the format (ply, obj, glb, ...) follows the file extension.

    The file is written next to `path` under a temporary name and moved into place with os.replace,
    so an interrupted write never leaves a truncated file or a half-overwritten previous one.

    Args:
        vertices: (V, 3); faces: (F, 3) int; colors: optional (V, 3|4) uint8 or float in [0, 1].
    """
    path = Path(path)
    mesh = trimesh.Trimesh(
        vertices=np.asarray(vertices),
        faces=np.asarray(faces),
        vertex_colors=None if colors is None else _uint8_colors(colors),
        process=False,
    )
    data = mesh.export(file_type=path.suffix.lstrip(".").lower())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_reference(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read reference geometry: a mesh as (vertices (V, 3), faces (F, 3) int64) or a point cloud
    (ply without faces, ...) as (points (P, 3), None), float64.

    Raises:
        InputError: the file is missing, unreadable or holds no points.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "reference geometry file not found")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as err:  # trimesh raises many types for malformed files
        raise InputError(path, f"cannot read reference geometry: {err}") from err
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.to_geometry() if loaded.geometry else None
    vertices = getattr(loaded, "vertices", None)
    if vertices is None or len(vertices) == 0:
        raise InputError(path, "reference geometry is empty (no vertices)")
    faces = getattr(loaded, "faces", None)
    vertices = np.asarray(vertices, dtype=np.float64)
    if faces is None or len(faces) == 0:
        return vertices, None
    return vertices, np.asarray(faces, dtype=np.int64)
