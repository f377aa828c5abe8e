"""Result files: atomic writes of extracted meshes and refined cameras, and loading of reference (GT) geometry
(meshes, point clouds, DTU's official evaluation files)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.io
import trimesh
from PIL import Image

from core.errors import InputError
from core.io import atomic_write


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
    atomic_write(path, data.encode() if isinstance(data, str) else data)


def save_textured_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, image: np.ndarray) -> list[Path]:
    """Write a UV-textured mesh atomically: ``path`` (.obj) with its material (.mtl) and texture
    (.png) beside it under the same stem, and the same mesh as a binary glTF (.glb) with the texture
    embedded. The texture and material are written before the OBJ that names them.

    Args:
        vertices: (V, 3); faces: (F, 3) int; uv: (V, 2) in [0, 1], v up (OBJ convention);
            image: (S, S, 3) uint8 or float in [0, 1], row 0 at the top.

    Returns:
        the paths written: png, mtl, obj, glb.
    """
    path = Path(path).with_suffix(".obj")
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(_uint8_colors(image)), name=path.stem,
                                                      diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255),
                                                      specular=(0, 0, 0, 255))
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices), faces=np.asarray(faces), process=False,
                           visual=trimesh.visual.TextureVisuals(uv=np.asarray(uv), material=material))
    text, files = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_texture=True,
                                                  mtl_name=f"{path.stem}.mtl", return_texture=True)
    written = []
    for name in sorted(files, key=lambda n: n.endswith(".mtl")):  # the png, then the mtl
        atomic_write(path.with_name(name), files[name])
        written.append(path.with_name(name))
    atomic_write(path, text.encode())
    # glTF's metallic factor defaults to 1 (a mirror, near black in viewers without an environment map): a matte one.
    mesh.visual.material = trimesh.visual.material.PBRMaterial(name=path.stem, baseColorTexture=material.image,
                                                               metallicFactor=0.0, roughnessFactor=1.0)
    atomic_write(path.with_suffix(".glb"), mesh.export(file_type="glb"))
    return [*written, path, path.with_suffix(".glb")]


def textured_files(mesh_path: str | Path) -> list[Path]:
    """The textured mesh files written beside ``mesh_path`` (:func:`save_textured_mesh` of ``<stem>_textured``) that exist."""
    path = Path(mesh_path)
    return [p for p in (path.with_name(f"{path.stem}_textured{ext}") for ext in (".obj", ".mtl", ".png", ".glb")) if p.is_file()]


def point_cloud_path(mesh_path: str | Path) -> Path:
    """The point cloud written beside ``mesh_path`` (``export.points``): ``<stem>_points.ply``."""
    path = Path(mesh_path)
    return path.with_name(f"{path.stem}_points.ply")


def save_point_cloud(path: str | Path, points: np.ndarray, normals: np.ndarray, colors: np.ndarray) -> None:
    """Write an oriented, coloured point cloud atomically as binary little-endian PLY, one ``vertex``
    element with float ``x y z nx ny nz`` and uchar ``red green blue`` (what CloudCompare, MeshLab, Open3D
    and trimesh read as positions, normals and colours).

    Args:
        points: (P, 3); normals: (P, 3); colors: (P, 3) uint8 or float in [0, 1].
    """
    fields = [*((k, "<f4") for k in ("x", "y", "z", "nx", "ny", "nz")), *((k, "u1") for k in ("red", "green", "blue"))]
    records = np.empty(len(points), dtype=np.dtype(fields))
    for i, key in enumerate(("x", "y", "z")):
        records[key], records["n" + key] = np.asarray(points)[:, i], np.asarray(normals)[:, i]
    for i, key in enumerate(("red", "green", "blue")):
        records[key] = _uint8_colors(colors).reshape(-1, 3)[:, i]
    header = "".join(f"property {'float' if kind == '<f4' else 'uchar'} {key}\n" for key, kind in fields)
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(records)}\n{header}end_header\n"
    atomic_write(path, header.encode() + records.tobytes())


def save_cameras(path: str | Path, intrinsics: np.ndarray, c2w: np.ndarray, scale_mat: np.ndarray) -> None:
    """Write cameras atomically in the NeuS/IDR ``cameras_sphere.npz`` layout: ``world_mat_i`` (4, 4)
    projects world points to pixels and ``scale_mat_i`` maps the normalised frame to the world, so
    ``world_mat_i @ scale_mat_i = K_i [R_i | t_i]`` for the normalised-frame pose.

    Args:
        intrinsics: (N, 3, 3); c2w: (N, 4, 4) normalised-frame camera-to-world; scale_mat: (4, 4).
    """
    arrays = {}
    inv_scale = np.linalg.inv(scale_mat)
    for i, (k, pose) in enumerate(zip(intrinsics, c2w)):
        w2c = np.linalg.inv(pose)
        projection = np.eye(4)
        projection[:3, :4] = k @ w2c[:3, :4]
        arrays[f"world_mat_{i}"] = projection @ inv_scale
        arrays[f"scale_mat_{i}"] = np.asarray(scale_mat, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def load_reference(path: str | Path, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Read reference geometry: a mesh as (vertices (V, 3), faces (F, 3) int64) or a point cloud
    (ply without faces, ...) as (points (P, 3), None), float64. ``allow_empty``: a file without
    vertices (an exported mesh of a run that found no surface) reads as a mesh with (0, 3) arrays.

    Raises:
        InputError: the file is missing, unreadable or (unless ``allow_empty``) holds no points.
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
    if (vertices is None or len(vertices) == 0) and allow_empty:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    if vertices is None or len(vertices) == 0:
        raise InputError(path, "reference geometry is empty (no vertices)")
    faces = getattr(loaded, "faces", None)
    vertices = np.asarray(vertices, dtype=np.float64)
    if faces is None or len(faces) == 0:
        return vertices, None
    return vertices, np.asarray(faces, dtype=np.int64)


class DTUReference(NamedTuple):
    """DTU's official evaluation data of one scan (world millimetres)."""

    stl: np.ndarray       # (S, 3) float64 reference points
    obs_mask: np.ndarray  # (X, Y, Z) bool observation mask
    bb: np.ndarray        # (2, 3) float64 min and max corners of the mask's volume
    res: float            # its voxel size
    plane: np.ndarray     # (4,) float64 ground plane; points with [p, 1] . plane > 0 are kept


def dtu_official_paths(dtu_dir: str | Path, scan: int) -> tuple[Path, Path, Path]:
    """The files of DTU's official evaluation for ``scan`` under ``dtu_dir``: ``Points/stl/stl{scan:03}_total.ply``,
    ``ObsMask/ObsMask{scan}_10.mat`` and ``ObsMask/Plane{scan}.mat``.

    Raises:
        InputError: one of them is missing.
    """
    root = Path(dtu_dir)
    paths = (root / "Points" / "stl" / f"stl{scan:03d}_total.ply", root / "ObsMask" / f"ObsMask{scan}_10.mat",
             root / "ObsMask" / f"Plane{scan}.mat")
    for path in paths:
        if not path.is_file():
            raise InputError(path, "DTU evaluation file not found (eval.dtu_dir must hold Points/stl and ObsMask)")
    return paths


def _load_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        data = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises many types for malformed or v7.3 (HDF5) files
        raise InputError(path, f"cannot read MATLAB file: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    missing = [key for key in keys if key not in data]
    if missing:
        raise InputError(path, f"missing variable {', '.join(missing)}")
    return {key: np.asarray(data[key]) for key in keys}


def load_dtu_official(dtu_dir: str | Path, scan: int) -> DTUReference:
    """Read DTU's official evaluation files for ``scan`` (see :func:`dtu_official_paths`).

    Raises:
        InputError: a file is missing, unreadable, or holds arrays of the wrong shape.
    """
    stl_path, mask_path, plane_path = dtu_official_paths(dtu_dir, scan)
    mask = _load_mat(mask_path, ("ObsMask", "BB", "Res"))
    if mask["ObsMask"].ndim != 3 or mask["BB"].shape != (2, 3) or mask["Res"].size != 1:
        raise InputError(mask_path, f"expected ObsMask (X, Y, Z), BB (2, 3) and Res (1), got {mask['ObsMask'].shape}, "
                                    f"{mask['BB'].shape} and {mask['Res'].shape}")
    res = float(mask["Res"].reshape(()))
    if not res > 0:
        raise InputError(mask_path, f"Res must be positive, got {res}")
    plane = _load_mat(plane_path, ("P",))["P"]
    if plane.size != 4:
        raise InputError(plane_path, f"expected P with 4 values, got shape {plane.shape}")
    stl, _ = load_reference(stl_path)
    return DTUReference(stl, mask["ObsMask"].astype(bool), mask["BB"].astype(np.float64), res,
                        plane.astype(np.float64).reshape(4))
