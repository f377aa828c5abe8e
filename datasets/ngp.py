"""Loader for instant-ngp / NeuS2 ``transforms.json`` scenes.

Conventions implemented (read from instant-ngp's and NeuS2's ``src/nerf_loader.cu``):

- ``frames[i].transform_matrix``: a (4, 4) (or 3x4) camera-to-world. In plain instant-ngp files it is
  OpenGL/Blender (x right, y up, z backward); with a true top-level ``from_na`` (NeuS2's own format,
  e.g. converted from NeuS) it is already OpenCV (x right, y down, z forward: "rotated by 180 degrees
  about x"). NeuS2 itself only tests whether the key is present; here ``"from_na": false`` means plain.
- ngp maps a camera position ``p`` into its unit cube by ``p * scale + offset`` (defaults 0.33 and
  [0.5, 0.5, 0.5]; a top-level ``aabb`` [[min], [max]] sets them so the box's longest side fills the
  cube), then cycles the axes (xyz <- yzx, not for ``from_na``). ``aabb_scale`` only enlarges the
  region ngp marches beyond that cube (for backgrounds). The axis cycle is a rotation of the world and
  is not applied here: our frames keep the json's axes.
- Our normalised frame is ngp's unit cube mapped to [-1, 1]^3: ``x = 2 (p * scale + offset) - 1``. The
  object is assumed inside the cube's inscribed sphere, which becomes our unit sphere. NeuS2's files
  converted from NeuS (``scale`` 0.5, ``offset`` 0.5) thus load in exactly NeuS's normalised frame.
  ``scale_mat`` maps it back to the json's world frame, composed with our optional top-level
  ``neus_scale_mat`` (4x4, json world -> the original world, e.g. DTU millimetres; written by
  ``tools.convert_scene``, ignored by instant-ngp and NeuS2).
- Intrinsics per frame: ``intrinsic_matrix`` (3x3 or 4x4, NeuS2) when the frame has one, else
  ``fl_x``/``fl_y`` or ``camera_angle_x``/``camera_angle_y`` (radians) and ``cx``/``cy`` (default:
  the image centre), each read from the frame first, then from the top level. One focal length
  given serves both axes. Lens distortion (non-zero ``k1..k4``, ``p1``, ``p2``) is refused.
- ``file_path`` is relative to the json's folder and may lack its extension. RGBA images: the
  straight RGB is the image and alpha the mask; when every pixel of every image is opaque (RGB files),
  the scene has no masks. Frames keep the json's order (instant-ngp sorts them by name).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.errors import InputError
from datasets.blender import _GL_TO_CV, _field
from datasets.npz import check_masks, read_images
from datasets.scene import Scene, ground_truth_path, split_views

TRANSFORM_FILES = ("transforms.json", "transform.json")  # instant-ngp's name, NeuS2's README name
SPLIT_FILES = (("transforms_train.json", "transforms_test.json"), ("transform_train.json", "transform_test.json"))
NGP_SCALE, NGP_OFFSET = 0.33, (0.5, 0.5, 0.5)  # instant-ngp's defaults (NERF_SCALE)
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "tga", "gif")  # tried, in order, for a file_path without one


def find_transforms(root: Path, transforms: str | None = None) -> list[Path]:
    """The transforms file(s) of a scene folder: ``transforms`` (relative to ``root``) when given, else the
    first of ``transforms.json``, ``transform.json``, then a ``transform(s)_{train,test}.json`` pair."""
    if transforms is not None:
        path = root / transforms
        if not path.is_file():
            raise InputError(str(path), "transforms file does not exist")
        return [path]
    single = next((root / f for f in TRANSFORM_FILES if (root / f).is_file()), None)
    if single is not None:
        return [single]
    pair = next((p for p in SPLIT_FILES if all((root / f).is_file() for f in p)), None)
    if pair is None:
        raise InputError(str(root / TRANSFORM_FILES[0]), "no transforms file (expected transforms.json, transform.json "
                                                         "or a transforms_train.json + transforms_test.json pair)")
    return [root / f for f in pair]


def _number(value: object, path: Path, label: str, positive: bool = False) -> float:
    """A finite JSON number (> 0 when ``positive``), or InputError naming ``label``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
        raise InputError(str(path), f"{label} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return float(value)


def _matrix(value: object, path: Path, label: str, shapes: tuple[tuple[int, int], ...]) -> np.ndarray:
    """A finite numeric JSON matrix of one of ``shapes`` as float64."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise InputError(str(path), f"{label} is not a numeric matrix ({err})") from err
    if matrix.shape not in shapes or not np.isfinite(matrix).all():
        wanted = " or ".join("x".join(map(str, shape)) for shape in shapes)
        raise InputError(str(path), f"{label} must be a finite {wanted} matrix, got shape {matrix.shape}")
    return matrix


def _cube_to_world(meta: dict, path: Path) -> np.ndarray:
    """(4, 4) normalised frame -> json world: the inverse of ``x = 2 (p * scale + offset) - 1``."""
    if "aabb" in meta:
        box = _matrix(meta["aabb"], path, "aabb", ((2, 3),))
        scale = 1.0 / max(float((box[1] - box[0]).max()), 1e-6)  # as instant-ngp: longest side fills the cube
        offset = 0.5 - 0.5 * (box[0] + box[1]) * scale
    else:
        scale = _number(meta.get("scale", NGP_SCALE), path, "scale", positive=True)
        raw = meta.get("offset", NGP_OFFSET)  # a number or a 3-vector
        offset = _matrix(raw, path, "offset", ((3,),)) if isinstance(raw, (list, tuple)) else np.full(3, _number(raw, path, "offset"))
    to_world = np.eye(4)
    to_world[:3, :3] /= 2.0 * scale
    to_world[:3, 3] = (1.0 - 2.0 * offset) / (2.0 * scale)
    return to_world


def _check_no_distortion(owner: dict, path: Path, prefix: str) -> None:
    """Refuse non-zero lens distortion coefficients of the top level or a frame (``prefix`` names it)."""
    for key in DISTORTION_KEYS:
        if key in owner and _number(owner[key], path, prefix + key) != 0.0:
            raise InputError(str(path), f"{prefix}{key}={owner[key]}: lens distortion is not supported; undistort the "
                                        "images first (e.g. COLMAP's image_undistorter) and set it to 0")


def _image_path(base: Path, frame: dict, path: Path, i: int) -> Path:
    rel = str(_field(frame, "file_path", path, f"frames[{i}].file_path")).replace("\\", "/")
    if not rel:
        raise InputError(str(path), f"frames[{i}].file_path is empty")
    image = base / rel
    if not image.is_file() and not image.suffix:
        image = next((c for c in (base / f"{rel}.{ext}" for ext in IMAGE_EXTENSIONS) if c.is_file()), image)
    if not image.is_file():
        raise InputError(str(image), f"frame image not found (frames[{i}].file_path of {path.name})")
    return image


def _intrinsics(meta: dict, frame: dict, size: tuple[int, int], path: Path, i: int) -> np.ndarray:
    """(3, 3) pixel intrinsics of frame ``i`` whose image is ``size`` = (W, H)."""
    if "intrinsic_matrix" in frame:
        return _matrix(frame["intrinsic_matrix"], path, f"frames[{i}].intrinsic_matrix", ((3, 3), (4, 4)))[:3, :3].copy()

    def value(key: str) -> float | None:
        owner = frame if key in frame else meta if key in meta else None
        return None if owner is None else _number(owner[key], path, f"{'' if owner is meta else f'frames[{i}].'}{key}")

    focal = []
    for axis, extent in zip("xy", size):
        fl, angle = value(f"fl_{axis}"), value(f"camera_angle_{axis}")
        if angle is not None and not 0.0 < angle < math.pi:
            raise InputError(str(path), f"camera_angle_{axis} must be in (0, pi), got {angle!r}")
        focal.append(fl if fl is not None else None if angle is None else 0.5 * extent / math.tan(0.5 * angle))
    if focal == [None, None]:
        raise InputError(str(path), f"frames[{i}] has no intrinsics (fl_x/fl_y, camera_angle_x/y or intrinsic_matrix)")
    fx, fy = (f if f is not None else next(g for g in focal if g is not None) for f in focal)
    if fx <= 0 or fy <= 0:
        raise InputError(str(path), f"frames[{i}]: focal lengths must be positive, got {fx!r}, {fy!r}")
    cx, cy = (value(key) for key in ("cx", "cy"))
    cx, cy = 0.5 * size[0] if cx is None else cx, 0.5 * size[1] if cy is None else cy
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def read_transforms(path: Path) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    """Parse one transforms file (image headers are read for their size, not their pixels).

    Returns:
        paths: the frames' image files; intrinsics: (N, 3, 3) in pixels of the files; c2w: (N, 4, 4)
        OpenCV camera-to-world in our normalised frame; scale_mat: (4, 4) normalised -> world.
    """
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(str(path), f"invalid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise InputError(str(path), "must hold a JSON object with frames")
    frames = _field(meta, "frames", path, "frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(str(path), "frames must be a non-empty list")
    cube = _cube_to_world(meta, path)
    original = np.eye(4)
    if "neus_scale_mat" in meta:
        original = _matrix(meta["neus_scale_mat"], path, "neus_scale_mat", ((4, 4),))
        if abs(np.linalg.det(original[:3, :3])) < 1e-12:
            raise InputError(str(path), "neus_scale_mat is not invertible")
    from_na = bool(meta.get("from_na", False))
    _check_no_distortion(meta, path, "")
    paths, intrinsics, c2w = [], [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise InputError(str(path), f"frames[{i}] must be a JSON object")
        _check_no_distortion(frame, path, f"frames[{i}].")
        image = _image_path(path.parent, frame, path, i)
        try:
            with Image.open(image) as img:
                size = img.size
        except Exception as err:  # PIL signals undecodable files with several exception types
            raise InputError(str(image), f"cannot read image ({err})") from err
        for key, extent in zip("wh", size):
            declared = frame.get(key, meta.get(key))
            if declared is not None and _number(declared, path, key) != extent:
                raise InputError(str(image), f"image is {size[0]}x{size[1]} but {path.name} declares {key}={declared}")
        label = f"frames[{i}].transform_matrix"
        pose = _matrix(_field(frame, "transform_matrix", path, label), path, label, ((3, 4), (4, 4)))
        pose = np.vstack([pose[:3], [0.0, 0.0, 0.0, 1.0]]) @ (np.eye(4) if from_na else _GL_TO_CV)
        rotation = pose[:3, :3]
        if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-3) or np.linalg.det(rotation) < 0:
            raise InputError(str(path), f"{label} is not a rigid camera-to-world (its 3x3 part is not a rotation)")
        pose[:3, 3] = np.linalg.solve(cube[:3, :3], pose[:3, 3] - cube[:3, 3])  # rotations are kept: cube is a scaling
        paths.append(image)
        intrinsics.append(_intrinsics(meta, frame, size, path, i))
        c2w.append(pose)
    return paths, np.stack(intrinsics), np.stack(c2w), original @ cube


def load_ngp_scene(
    root: str,
    transforms: str | None = None,
    test_views: list[int] | None = None,
    test_every: int | None = None,
    downscale: int = 1,
    gt_path: str | None = None,
    name: str | None = None,
    use_masks: bool = True,
) -> Scene:
    """Load an instant-ngp / NeuS2 scene (conventions in the module docstring).

    Args:
        root: the scene folder.
        transforms: the transforms file relative to ``root``; None: ``transforms.json``, ``transform.json``,
            or a ``transform(s)_{train,test}.json`` pair whose test frames are the held-out views.
        test_views, test_every: held-out views of a single transforms file (see
            :func:`datasets.scene.split_views`); a train/test pair ignores them.
        downscale: integer box-filter downscaling of images and masks (intrinsics follow).
        gt_path: ground-truth mesh/points in world coordinates; defaults to ``<root>/gt_mesh.ply`` if present.
        name: scene name for logs; defaults to the folder name.
        use_masks: whether training may use the masks (they serve evaluation either way).
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(str(base), "scene folder does not exist")
    files = find_transforms(base, transforms)
    parts = [read_transforms(f) for f in files]
    if any(not np.allclose(p[3], parts[0][3], rtol=1e-9, atol=1e-12) for p in parts[1:]):
        raise InputError(str(files[1]), f"scale, offset, aabb or neus_scale_mat differ from {files[0].name}")
    paths = [p for part in parts for p in part[0]]
    intrinsics = np.concatenate([p[1] for p in parts])
    c2w = np.concatenate([p[2] for p in parts])
    rgba, _ = read_images(paths, slice(0, 4), downscale)
    masks = None
    if (rgba[..., 3] < 1.0).any():
        check_masks(rgba[..., 3], paths)
        masks = torch.from_numpy(np.ascontiguousarray(rgba[..., 3]))
    intrinsics[:, :2] /= downscale
    if len(parts) == 2:
        train_ids, test_ids = list(range(len(parts[0][0]))), list(range(len(parts[0][0]), len(paths)))
    else:
        train_ids, test_ids = split_views(len(paths), test_views, test_every)
    gt_path = ground_truth_path(base, gt_path)
    return Scene(
        images=torch.from_numpy(np.ascontiguousarray(rgba[..., :3])),
        masks=masks,
        intrinsics=torch.from_numpy(intrinsics).float(),
        c2w=torch.from_numpy(c2w).float(),
        scale_mat=parts[0][3],
        train_ids=train_ids,
        test_ids=test_ids,
        root=str(base),
        name=name or base.resolve().name,
        gt_path=gt_path,
        use_masks=use_masks,
    )
