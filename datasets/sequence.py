"""Dynamic scenes as sequences of static frames (trained frame by frame, as NeuS2 does: Wang et al., ICCV 2023).

A sequence folder holds one subfolder per frame, in natural name order (``frame_2`` before ``frame_10``), each a
scene in a layout the project reads: NeuS/IDR (``cameras_sphere.npz`` or ``cameras.npz``) or instant-ngp/NeuS2
(``transforms.json``, ``transform.json`` or a train/test pair); layouts may differ between frames. A subfolder
that holds images but no camera file is refused (a frame without cameras); other subfolders, and hidden ones (our
temporary folders), are ignored. Every frame's images have frame 0's size (checked as each frame loads). A frame's ``gt_mesh.ply`` is its ground truth.
An optional ``sequence.json`` with ``motions``, one (4, 4) matrix per frame folder, gives the ground-truth rigid
object-to-world motion of each frame in the normalised frame (written by ``datasets.synthetic.generate_sequence``).
Frames are read when loaded, one at a time.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from core.errors import InputError
from datasets.ngp import find_transforms, load_ngp_scene, read_transforms
from datasets.npz import CAMERA_FILES, IMAGE_SUFFIXES, load_npz_scene, read_cameras
from datasets.scene import Scene

SEQUENCE_FILE = "sequence.json"
SCALE_RTOL = 1e-5  # frames must share the normalised frame (warm-starting assumes it) up to this relative difference


def _natural_key(name: str) -> list:
    """Sort key that orders the digit runs of ``name`` by value."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _layout(folder: Path) -> str | None:
    """``"npz"`` or ``"ngp"`` from the camera file ``folder`` holds, None when it holds neither."""
    has_npz = any((folder / f).is_file() for f in CAMERA_FILES)
    try:
        find_transforms(folder)
        has_json = True
    except InputError:
        has_json = False
    if has_npz and has_json:
        raise InputError(str(folder), "holds both a camera npz and a transforms json; keep only one layout per frame")
    return "npz" if has_npz else "ngp" if has_json else None


def _holds_images(folder: Path) -> bool:
    """Whether ``folder`` or a subfolder of it holds image files (a frame folder, whatever its layout)."""
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for sub in (folder, *(d for d in folder.iterdir() if d.is_dir()))
               for p in sub.iterdir())


def _load_frame(folder: Path, **options: object) -> Scene:
    """The scene of a frame folder in its layout; ``options`` go to the layout's loader."""
    return (load_npz_scene if _layout(folder) == "npz" else load_ngp_scene)(str(folder), **options)


def frame_scale_mat(folder: Path) -> np.ndarray:
    """(4, 4) normalised -> world matrix of a frame folder, from its camera file alone (no image is read)."""
    if _layout(folder) == "npz":
        return read_cameras(next(folder / f for f in CAMERA_FILES if (folder / f).is_file()), 1)[2]
    return read_transforms(find_transforms(folder)[0])[3]


@dataclass
class Sequence:
    """A dynamic scene: a static Scene per frame (same normalised frame for all), loaded on demand.

    Attributes:
        frames: the frame folders, in time order.
        ids: each frame's index among the frame folders of the sequence folder (names its scene).
        name: the sequence's name; frame i's scene is ``f"{name}_frame_{ids[i]:04d}"``.
        load_frame: reads one frame folder into a Scene.
        motions: (F, 4, 4) ground-truth rigid object-to-world motion per frame in the normalised frame, or None.
    """

    frames: list[Path]
    ids: list[int]
    name: str
    load_frame: Callable[[Path], Scene]
    motions: np.ndarray | None = None
    _scale_mat: np.ndarray | None = field(default=None, init=False, repr=False)  # frame 0's, read once
    _hw: tuple[tuple[int, int], Path] | None = field(default=None, init=False, repr=False)  # the first loaded frame's image size

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, i: int) -> Scene:
        """Frame ``i``'s Scene; InputError naming its folder when its scale_mat differs from frame 0's or its
        image size from the frames loaded before."""
        folder = self.frames[i]
        scene = self.load_frame(folder)
        if self._scale_mat is None:
            self._scale_mat = scene.scale_mat if i == 0 else frame_scale_mat(self.frames[0])
        difference = float(np.abs(scene.scale_mat - self._scale_mat).max())
        if difference > SCALE_RTOL * float(np.abs(self._scale_mat).max()):
            raise InputError(str(folder), f"scale_mat differs from that of {self.frames[0]} (by up to {difference:.3g}); "
                                          "every frame must share one normalised frame")
        if self._hw is None:
            self._hw = (scene.hw, folder)
        elif scene.hw != self._hw[0]:
            raise InputError(str(folder), f"images are {scene.hw[1]}x{scene.hw[0]} pixels, those of {self._hw[1]} "
                                          f"{self._hw[0][1]}x{self._hw[0][0]}; every frame must have one image size")
        scene.name = f"{self.name}_frame_{self.ids[i]:04d}"
        return scene


def _read_motions(path: Path, n_frames: int) -> np.ndarray | None:
    """The (F, 4, 4) ``motions`` of a sequence.json for ``n_frames`` frame folders, or None when it has none."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(str(path), f"invalid JSON ({err})") from err
    if not isinstance(meta, dict) or "motions" not in meta:
        return None
    try:
        motions = np.asarray(meta["motions"], dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise InputError(str(path), f"motions is not a list of numeric matrices ({err})") from err
    if motions.shape != (n_frames, 4, 4) or not np.isfinite(motions).all():
        raise InputError(str(path), f"motions must be {n_frames} finite 4x4 matrices (one per frame folder), "
                                    f"got shape {motions.shape}")
    return motions


def load_sequence(
    root: str,
    frames: list[int] | None = None,
    test_views: list[int] | None = None,
    test_every: int | None = 8,
    downscale: int = 1,
    use_masks: bool = True,
    name: str | None = None,
) -> Sequence:
    """Find the frames of a sequence folder (layouts in the module docstring); images are read by Sequence.load.

    Args:
        root: the sequence folder, one subfolder per frame.
        frames: indices of the frames to keep (among the frame folders in natural order), None: all.
        test_views, test_every, downscale, use_masks: passed to every frame's loader.
        name: the sequence's name; defaults to the folder name.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(str(base), "sequence folder does not exist" if not base.exists() else "is not a folder")
    folders = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: _natural_key(p.name))
    found = [p for p in folders if _layout(p) is not None]
    without = next((p for p in folders if p not in found and _holds_images(p)), None)
    if without is not None:
        raise InputError(str(without), "frame folder holds images but no cameras (cameras_sphere.npz, cameras.npz or transforms.json)")
    if not found:
        raise InputError(str(base), "no frame folders: each frame is a subfolder holding cameras_sphere.npz or "
                                    "cameras.npz (NeuS/IDR layout) or transforms.json (instant-ngp/NeuS2 layout)")
    ids = list(range(len(found))) if frames is None else list(frames)
    if not ids:
        raise InputError("dataset.frames", "is empty; name at least one frame (or null for all)")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(found)]
    if bad:
        raise InputError("dataset.frames", f"indices {bad} out of range for the {len(found)} frames of {base}")
    motions = _read_motions(base / SEQUENCE_FILE, len(found)) if (base / SEQUENCE_FILE).is_file() else None
    return Sequence(
        frames=[found[i] for i in ids],
        ids=ids,
        name=name or base.resolve().name,
        load_frame=partial(_load_frame, test_views=test_views, test_every=test_every, downscale=downscale,
                           use_masks=use_masks),
        motions=None if motions is None else motions[ids],
    )
