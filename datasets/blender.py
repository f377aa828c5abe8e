"""Loader for the NeRF synthetic (Blender) layout: ``transforms_{train,test}.json`` and RGBA images.

Layout and camera conventions as released with NeRF (Mildenhall et al., ECCV 2020).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from core.errors import InputError
from datasets.npz import check_masks, read_images
from datasets.scene import Scene

_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips the camera's y and z axes (OpenGL -> OpenCV)


def _field(obj: object, key: str, path: Path, label: str) -> object:
    """``obj[key]`` of a parsed JSON object, or InputError naming the missing ``label``."""
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(str(path), f"missing key {label}")
    return obj[key]


def _read_split(base: Path, split: str) -> tuple[list[Path], np.ndarray, float]:
    """Image paths, (N, 4, 4) OpenGL camera-to-world matrices and camera_angle_x of one transforms file."""
    path = base / f"transforms_{split}.json"
    if not path.is_file():
        raise InputError(str(path), "camera file does not exist")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(str(path), f"invalid JSON ({err})") from err
    angle = _field(meta, "camera_angle_x", path, "camera_angle_x")
    if not isinstance(angle, (int, float)) or not 0.0 < angle < math.pi:
        raise InputError(str(path), f"camera_angle_x must be a number in (0, pi), got {angle!r}")
    frames = _field(meta, "frames", path, "frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(str(path), "frames must be a non-empty list")
    paths, c2w = [], []
    for i, frame in enumerate(frames):
        rel = str(_field(frame, "file_path", path, f"frames[{i}].file_path"))
        image = base / rel if (base / rel).is_file() else base / f"{rel}.png"
        if not image.is_file():
            raise InputError(str(image), f"frame image not found (frames[{i}].file_path of {path.name})")
        try:
            matrix = np.asarray(_field(frame, "transform_matrix", path, f"frames[{i}].transform_matrix"), dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise InputError(str(path), f"frames[{i}].transform_matrix is not a numeric matrix ({err})") from err
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise InputError(str(path), f"frames[{i}].transform_matrix must be a finite 4x4 matrix")
        paths.append(image)
        c2w.append(matrix)
    return paths, np.stack(c2w), float(angle)


def load_blender_scene(
    root: str,
    scene_radius: float = 1.5,
    downscale: int = 1,
    max_test_views: int | None = None,
    name: str | None = None,
    use_masks: bool = True,
) -> Scene:
    """Load a Blender-layout scene; train frames come first, then the test frames.

    Args:
        root: folder with ``transforms_train.json`` and ``transforms_test.json``.
        scene_radius: world radius that holds the object; positions are divided by it, so
            ``scale_mat = diag(r, r, r, 1)``.
        downscale: integer box-filter downscaling of the images (intrinsics follow).
        max_test_views: keep only the first this many test frames (None: all).
        name: scene name for logs; defaults to the folder name.
        use_masks: whether training may use the masks (they serve evaluation either way).

    Images are the straight RGB colours, masks the (soft) alpha channel.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(str(base), "scene folder does not exist")
    if not scene_radius > 0:
        raise InputError("dataset.scene_radius", f"must be > 0, got {scene_radius!r}")
    if max_test_views is not None and max_test_views < 0:
        raise InputError("dataset.max_test_views", f"must be >= 0, got {max_test_views!r}")
    train_paths, train_c2w, angle = _read_split(base, "train")
    test_paths, test_c2w, _ = _read_split(base, "test")
    test_paths, test_c2w = test_paths[:max_test_views], test_c2w[:max_test_views]
    rgba, (height, width) = read_images(train_paths + test_paths, slice(0, 4), downscale)
    check_masks(rgba[..., 3], train_paths + test_paths)
    focal = 0.5 * width / math.tan(0.5 * angle)
    intrinsics = np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])
    intrinsics[:2] /= downscale
    c2w = np.concatenate([train_c2w, test_c2w]) @ _GL_TO_CV
    c2w[:, :3, 3] /= scene_radius
    n_train, n_views = len(train_paths), rgba.shape[0]
    return Scene(
        images=torch.from_numpy(np.ascontiguousarray(rgba[..., :3])),
        masks=torch.from_numpy(np.ascontiguousarray(rgba[..., 3])),
        intrinsics=torch.from_numpy(intrinsics).float().expand(n_views, 3, 3).contiguous(),
        c2w=torch.from_numpy(c2w).float(),
        scale_mat=np.diag([scene_radius, scene_radius, scene_radius, 1.0]),
        train_ids=list(range(n_train)),
        test_ids=list(range(n_train, n_views)),
        root=str(base),
        name=name or base.resolve().name,
        use_masks=use_masks,
        view_names=[f"{split}_{Path(p).stem}" for split, paths in (("train", train_paths), ("test", test_paths)) for p in paths],
    )
