"""Convert a scene between the NeuS/IDR layout and NeuS2's ``transform.json`` layout.

    python -m tools.convert_scene IN OUT

The direction follows IN. A NeuS/IDR folder (``cameras_sphere.npz`` or ``cameras.npz``, ``image/``,
optional ``mask/``) becomes NeuS2's format: ``transform.json`` with ``from_na``, ``scale`` 0.5 and
``offset`` 0.5 (so its world frame is NeuS's normalised frame), per-frame ``intrinsic_matrix`` (4x4) and
OpenCV ``transform_matrix``, our ``neus_scale_mat`` (the original world, ignored by NeuS2), and
``images/NNN.png``: RGBA with the mask as alpha (RGB without masks). A folder with a transforms file (any
that ``dataset=ngp`` reads) becomes the NeuS layout: ``cameras_sphere.npz`` (``world_mat_i``,
``scale_mat_i``), ``image/`` and, when the images have alpha, ``mask/``; a train/test pair becomes one
list, train frames first. ``gt_mesh.ply`` is copied. Images are written as 8-bit PNG. OUT must be new or
empty: everything is written to a temporary sibling folder, then renamed to OUT.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import InputError
from core.io import atomic_folder
from datasets.ngp import SPLIT_FILES, TRANSFORM_FILES, find_transforms, load_ngp_scene, read_transforms
from datasets.npz import CAMERA_FILES, load_npz_scene, read_cameras
from systems.mesh_io import save_cameras

NEUS2_FILE = "transform.json"


def _save_png(path: Path, pixels: np.ndarray) -> None:
    """(H, W) or (H, W, 3|4) floats in [0, 1] as an 8-bit PNG."""
    Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)).save(path)


def npz_to_neus2(src: Path, out: Path) -> int:
    """Write the NeuS/IDR scene ``src`` in NeuS2's format into the existing empty folder ``out``; returns the view count."""
    scene = load_npz_scene(str(src))  # validates everything as training would
    camera_file = next(src / f for f in CAMERA_FILES if (src / f).is_file())
    intrinsics, c2w, scale_mat = read_cameras(camera_file, scene.n_views)  # float64, unlike the scene's tensors
    (out / "images").mkdir()
    frames = []
    for i in tqdm(range(scene.n_views), desc="writing images", unit="view"):
        pixels = scene.images[i].numpy()
        if scene.masks is not None:
            pixels = np.dstack([pixels, scene.masks[i].numpy()])
        _save_png(out / "images" / f"{i:03d}.png", pixels)
        intrinsic = np.eye(4)
        intrinsic[:3, :3] = intrinsics[i]
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": c2w[i].tolist(),
                       "intrinsic_matrix": intrinsic.tolist()})
    height, width = scene.hw
    meta = {"from_na": True, "w": width, "h": height, "aabb_scale": 1.0, "scale": 0.5, "offset": [0.5, 0.5, 0.5],
            "neus_scale_mat": scale_mat.tolist(), "frames": frames}
    (out / NEUS2_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return scene.n_views


def neus2_to_npz(src: Path, out: Path) -> int:
    """Write the instant-ngp / NeuS2 scene ``src`` in the NeuS layout into the existing empty folder ``out``;
    returns the view count."""
    scene = load_ngp_scene(str(src))  # validates everything as training would
    parts = [read_transforms(f) for f in find_transforms(src)]  # float64, unlike the scene's tensors
    save_cameras(out / "cameras_sphere.npz", np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
                 parts[0][3])
    (out / "image").mkdir()
    if scene.masks is not None:
        (out / "mask").mkdir()
    for i in tqdm(range(scene.n_views), desc="writing images", unit="view"):
        _save_png(out / "image" / f"{i:03d}.png", scene.images[i].numpy())
        if scene.masks is not None:
            _save_png(out / "mask" / f"{i:03d}.png", scene.masks[i].numpy())
    return scene.n_views


def convert(src: str | Path, out: str | Path) -> str:
    """Convert ``src`` into the new or empty folder ``out`` (direction from ``src``'s files); returns a one-line summary."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(str(src), "scene folder does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(str(out), "already exists and is not empty; pass a new folder")
    has_npz = any((src / f).is_file() for f in CAMERA_FILES)
    has_json = any((src / f).is_file() for f in (*TRANSFORM_FILES, *(f for pair in SPLIT_FILES for f in pair)))
    if has_npz == has_json:
        raise InputError(str(src), "holds both a camera npz and a transforms json; keep only the one to convert from"
                         if has_npz else "neither a NeuS/IDR scene (cameras_sphere.npz or cameras.npz) nor an "
                                         "instant-ngp/NeuS2 one (transforms.json)")
    with atomic_folder(out) as folder:
        n_views = (npz_to_neus2 if has_npz else neus2_to_npz)(src, folder)
        if (src / "gt_mesh.ply").is_file():
            shutil.copy2(src / "gt_mesh.ply", folder / "gt_mesh.ply")
    return f"{n_views} views -> {out} ({'NeuS2 transform.json' if has_npz else 'NeuS cameras_sphere.npz'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.convert_scene", description=__doc__.splitlines()[0])
    parser.add_argument("src", metavar="IN", help="a NeuS/IDR scene folder or an instant-ngp/NeuS2 one")
    parser.add_argument("out", metavar="OUT", help="a new or empty folder")
    args = parser.parse_args(argv)
    try:
        print(convert(args.src, args.out))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
