"""The in-memory scene every loader returns and every system consumes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import InputError


@dataclass
class Scene:
    """Calibrated multi-view images in a normalised frame where the object lies inside the unit sphere.

    Cameras follow the OpenCV convention (x right, y down, z forward).

    Attributes:
        images: (N, H, W, 3) float32 colours in [0, 1] (straight, not premultiplied).
        masks: (N, H, W) float32 in [0, 1] (object = 1), or None when the scene has no masks.
        intrinsics: (N, 3, 3) pinhole matrices in pixels.
        c2w: (N, 4, 4) camera-to-world matrices in the normalised frame.
        scale_mat: (4, 4) maps normalised coordinates to the dataset's original world frame.
        train_ids: view indices used for training.
        test_ids: held-out view indices (never trained on).
        root: the folder the scene was read from.
        name: a short name for logs.
        gt_path: a ground-truth mesh or point cloud in world coordinates, or None.
        init_c2w: (N, 4, 4) rough starting poses for camera refinement (IDR's
            ``cameras_linear_init.npz``) in the same normalised frame, or None.
        use_masks: whether training may use the masks; held-out evaluation uses them regardless.
        view_names: a label per view from its file (Blender's ``test_r_12``), or None: labelled by index.
    """

    images: torch.Tensor
    masks: torch.Tensor | None
    intrinsics: torch.Tensor
    c2w: torch.Tensor
    scale_mat: np.ndarray
    train_ids: list[int]
    test_ids: list[int]
    root: str
    name: str
    gt_path: str | None = None
    init_c2w: torch.Tensor | None = None
    use_masks: bool = True
    view_names: list[str] | None = None

    def view_label(self, view: int) -> str:
        """How logs and ``renders/`` name view ``view``: its name, or ``viewNNN``."""
        return self.view_names[view] if self.view_names is not None else f"view{view:03d}"

    @property
    def n_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def train_masks(self) -> torch.Tensor | None:
        """The masks (N, H, W) training may use: ``masks`` when ``use_masks``, else None."""
        return self.masks if self.use_masks else None

    def to(self, device: torch.device | str) -> "Scene":
        """Move image, mask and camera tensors to ``device`` (in place); returns self."""
        self.images = self.images.to(device)
        self.masks = None if self.masks is None else self.masks.to(device)
        self.intrinsics = self.intrinsics.to(device)
        self.c2w = self.c2w.to(device)
        self.init_c2w = None if self.init_c2w is None else self.init_c2w.to(device)
        return self


def ground_truth_path(root: Path, gt_path: str | None) -> str | None:
    """The scene's ground truth: ``gt_path`` (which must exist), else ``<root>/gt_mesh.ply`` when present, else None."""
    if gt_path is not None and not Path(gt_path).is_file():
        raise InputError(gt_path, "ground-truth file does not exist")
    if gt_path is None and (root / "gt_mesh.ply").is_file():
        return str(root / "gt_mesh.ply")
    return gt_path


def split_views(n_views: int, test_views: list[int] | None, test_every: int | None) -> tuple[list[int], list[int]]:
    """Split ``range(n_views)`` into (train_ids, test_ids) from an explicit list or every k-th view."""
    if test_views:
        test = sorted({int(i) for i in test_views})
    elif test_every:
        test = list(range(0, n_views, int(test_every)))
    else:
        test = []
    bad = [i for i in test if not 0 <= i < n_views]
    if bad:
        raise InputError("dataset.test_views", f"indices {bad} out of range for {n_views} views")
    train = [i for i in range(n_views) if i not in set(test)]
    if not train:
        raise InputError("dataset.test_views", "every view is held out; nothing left to train on")
    return train, test
