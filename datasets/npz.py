"""Loader for the NeuS/IDR layout: ``image/``, optional ``mask/``, ``cameras_sphere.npz`` (or ``cameras.npz``),
and optionally IDR's ``cameras_linear_init.npz`` (rough starting poses for camera refinement).

For each view i, ``P_i = world_mat_i @ scale_mat_i`` projects normalised (unit-sphere) points to pixels;
it is split into intrinsics and a camera pose as in NeuS (Wang et al., NeurIPS 2021) / IDR (Yariv et al.,
NeurIPS 2020), with an RQ decomposition instead of OpenCV's ``decomposeProjectionMatrix``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.linalg import rq

from core.errors import InputError
from datasets.scene import Scene, ground_truth_path, split_views

CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")
INIT_CAMERA_FILE = "cameras_linear_init.npz"  # IDR's rough poses, the start of camera refinement
IMAGE_DIRS = ("image", "images")
MASK_DIRS = ("mask", "masks")
IMAGE_SUFFIXES = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
_WIDE_GREY = {"I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "F": 1.0}


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a (3, 4) projection ``K [R | t]`` (any scale, any sign) into K and the camera pose.

    Returns:
        K: (3, 3) intrinsics with K[2, 2] = 1 and positive focal lengths.
        c2w: (4, 4) camera-to-world matrix, OpenCV convention (x right, y down, z forward).
    """
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    if np.linalg.det(P[:, :3]) < 0:  # P is only defined up to scale: pick the sign that makes R a rotation
        P = -P
    K, R = rq(P[:, :3])
    signs = np.diag(np.sign(np.diag(K)))  # K R = (K S)(S R) with S = S^-1 makes the diagonal of K positive
    K, R = K @ signs, signs @ R
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -np.linalg.solve(P[:, :3], P[:, 3])
    return K / K[2, 2], c2w


def list_images(folder: Path) -> list[Path]:
    """Readable image files of ``folder`` sorted by name; raises InputError when there are none."""
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(str(folder), "no image files (png, jpg, ...) found")
    return paths


def read_image(path: Path) -> np.ndarray:
    """One image as (H, W, 4) float32 RGBA in [0, 1]: grey is replicated to RGB, a missing alpha is 1."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _WIDE_GREY:  # 16-bit / float grey: PIL's convert() would clip it to 8 bits
                grey = np.asarray(img, dtype=np.float32) / _WIDE_GREY[img.mode]
                return np.dstack([grey, grey, grey, np.ones_like(grey)]).clip(0.0, 1.0)
            return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    except Exception as err:  # PIL signals undecodable files with several exception types
        raise InputError(str(path), f"cannot read image ({err})") from err


def box_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W, C) -> (H // f, W // f, C) by averaging f x f blocks (trailing rows/columns are cropped).

    Pixel u of the result covers [f u, f (u + 1)) of the input, so intrinsics scale exactly by 1 / f.
    """
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).mean(axis=(1, 3))


def read_images(paths: list[Path], channels: slice, downscale: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
    """Read same-size images and keep ``channels`` of their RGBA.

    Returns:
        stack: (N, H // downscale, W // downscale, C) float32 in [0, 1], box-downscaled.
        size: (H, W) of the files before downscaling.
    """
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise InputError("dataset.downscale", f"must be an integer >= 1, got {downscale!r}")
    stack, size = None, (0, 0)
    for i, path in enumerate(paths):
        rgba = read_image(path)
        if stack is None:
            size = rgba.shape[:2]
            if min(size) < downscale:
                raise InputError("dataset.downscale", f"{downscale} is larger than the image size {size[1]}x{size[0]}")
        elif rgba.shape[:2] != size:
            raise InputError(str(path), f"image is {rgba.shape[1]}x{rgba.shape[0]} but {paths[0].name} is {size[1]}x{size[0]}")
        image = box_downscale(rgba[..., channels], downscale)
        if stack is None:
            stack = np.empty((len(paths), *image.shape), np.float32)
        stack[i] = image
    return stack, size


def check_masks(masks: np.ndarray, paths: list[Path]) -> None:
    """Refuse a mask (N, H, W) in [0, 1] with no object pixel (none above 0.5): it would carve the whole
    visual hull away and teach every ray of its view to be empty."""
    empty = np.flatnonzero(masks.reshape(len(masks), -1).max(axis=1) <= 0.5)
    if len(empty):
        raise InputError(str(paths[empty[0]]), f"mask is empty (no pixel above 0.5; {len(empty)} such masks); "
                                               "the object must be visible in every masked view: fix the mask or remove the view")


def _matrix(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """A (3, 4) or (4, 4) matrix of the camera file as (4, 4) float64."""
    if key not in data.files:
        raise InputError(str(path), f"missing key {key}")
    try:
        m = np.asarray(data[key], dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise InputError(str(path), f"key {key} is not a numeric matrix ({err})") from err
    if m.shape not in ((3, 4), (4, 4)):
        raise InputError(str(path), f"key {key} must be a 3x4 or 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        bad = "NaN" if np.isnan(m).any() else "inf"
        raise InputError(str(path), f"key {key} holds {bad} at {tuple(int(i) for i in np.argwhere(~np.isfinite(m))[0])}")
    return np.vstack([m[:3], [0.0, 0.0, 0.0, 1.0]])


def read_cameras(path: Path, n_views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decompose the first ``n_views`` cameras of a NeuS/IDR camera file.

    Returns:
        intrinsics: (N, 3, 3); c2w: (N, 4, 4) in the normalised frame; scale_mat: (4, 4) of view 0.
    """
    try:
        data = np.load(path)
    except Exception as err:  # zip, pickle and OS errors all mean an unusable file
        raise InputError(str(path), f"cannot read camera file ({err})") from err
    with data:
        missing = next((i for i in range(n_views) if f"world_mat_{i}" not in data.files), None)
        if missing is not None:
            n_cams = sum(1 for key in data.files if re.fullmatch(r"world_mat_\d+", key))
            raise InputError(str(path), f"missing key world_mat_{missing} ({n_cams} cameras for {n_views} images)")
        scaled = [i for i in range(n_views) if f"scale_mat_{i}" in data.files]
        if scaled and len(scaled) < n_views:
            first = next(i for i in range(n_views) if i not in scaled)
            raise InputError(str(path), f"missing key scale_mat_{first} while {len(scaled)} other views have one")
        intrinsics, c2w, scale_mats = np.empty((n_views, 3, 3)), np.empty((n_views, 4, 4)), []
        for i in range(n_views):
            world = _matrix(data, f"world_mat_{i}", path)
            scale = _matrix(data, f"scale_mat_{i}", path) if scaled else np.eye(4)
            P = (world @ scale)[:3]
            sv = np.linalg.svd(P[:, :3], compute_uv=False)
            if not sv[-1] > 1e-9 * sv[0]:
                raise InputError(str(path), f"camera world_mat_{i} is not invertible (det of P[:3, :3] is ~0)")
            intrinsics[i], c2w[i] = decompose_projection(P)
            scale_mats.append(scale)
    return intrinsics, c2w, scale_mats[0]


def load_npz_scene(
    root: str,
    test_views: list[int] | None = None,
    test_every: int | None = None,
    downscale: int = 1,
    gt_path: str | None = None,
    name: str | None = None,
    use_masks: bool = True,
) -> Scene:
    """Load a NeuS/IDR-layout scene folder.

    Args:
        root: folder with ``image/`` (or ``images/``), optional ``mask/`` (or ``masks/``) and the camera file.
        test_views, test_every: held-out views, see :func:`datasets.scene.split_views`.
        downscale: integer box-filter downscaling of images and masks (intrinsics follow).
        gt_path: ground-truth mesh/points in world coordinates; defaults to ``<root>/gt_mesh.ply`` if present.
        name: scene name for logs; defaults to the folder name.
        use_masks: whether training may use the masks (they are read for evaluation either way).
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(str(base), "scene folder does not exist")
    image_dir = next((base / d for d in IMAGE_DIRS if (base / d).is_dir()), None)
    if image_dir is None:
        raise InputError(str(base / IMAGE_DIRS[0]), "no image folder (expected image/ or images/)")
    cam_file = next((base / f for f in CAMERA_FILES if (base / f).is_file()), None)
    if cam_file is None:
        raise InputError(str(base / CAMERA_FILES[0]), "no camera file (expected cameras_sphere.npz or cameras.npz)")
    image_paths = list_images(image_dir)
    mask_dir = next((base / d for d in MASK_DIRS if (base / d).is_dir()), None)
    mask_paths = None if mask_dir is None else list_images(mask_dir)
    if mask_paths is not None and len(mask_paths) != len(image_paths):
        raise InputError(str(mask_dir), f"{len(mask_paths)} masks but {len(image_paths)} images in {image_dir}")
    intrinsics, c2w, scale_mat = read_cameras(cam_file, len(image_paths))
    init_c2w = None
    if (base / INIT_CAMERA_FILE).is_file():
        init_c2w = torch.from_numpy(read_cameras(base / INIT_CAMERA_FILE, len(image_paths))[1]).float()
    images, size = read_images(image_paths, slice(0, 3), downscale)
    masks = None
    if mask_paths is not None:
        masks, mask_size = read_images(mask_paths, slice(0, 1), downscale)
        if mask_size != size:
            raise InputError(str(mask_paths[0]), f"masks are {mask_size[1]}x{mask_size[0]} but images are {size[1]}x{size[0]}")
        check_masks(masks[..., 0], mask_paths)
        masks = torch.from_numpy(masks[..., 0])
    intrinsics[:, :2] /= downscale
    train_ids, test_ids = split_views(len(image_paths), test_views, test_every)
    gt_path = ground_truth_path(base, gt_path)
    return Scene(
        images=torch.from_numpy(images),
        masks=masks,
        intrinsics=torch.from_numpy(intrinsics).float(),
        c2w=torch.from_numpy(c2w).float(),
        scale_mat=scale_mat,
        train_ids=train_ids,
        test_ids=test_ids,
        root=str(base),
        name=name or base.resolve().name,
        gt_path=gt_path,
        init_c2w=init_c2w,
        use_masks=use_masks,
    )
