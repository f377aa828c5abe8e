"""Videos of trained systems: camera paths (a turntable round the object, a smooth path through the
training cameras), frame rendering with a system's own renderer, and MP4 writing (imageio-ffmpeg)."""
from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.geometry import look_at
from core.io import atomic_write
from models.cameras import matrix_to_quaternion, quaternion_to_matrix
from systems.base import BaseSystem, visualise
from systems.config import Video



def _azimuths(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cameras' (N, 4, 4) mean up direction (3,), two axes (3,) spanning the plane normal to it,
    and each camera centre's azimuth (N,) in [0, 2 pi) about it."""
    centres = c2w[:, :3, 3]
    up = -F.normalize(c2w[:, :3, 1].mean(0), dim=0)  # OpenCV's y axis points down
    e1 = F.normalize(centres[0] - (centres[0] @ up) * up, dim=0)
    e2 = torch.linalg.cross(up, e1)
    return up, e1, e2, torch.atan2(centres @ e2, centres @ e1) % (2 * math.pi)


def _largest_gap(azimuth: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Sorting order (N,) of azimuths (N,), the index in that order after which the largest gap
    between neighbours opens, and that gap (radians)."""
    order = torch.argsort(azimuth)
    sorted_azimuth = azimuth[order]
    gaps = torch.diff(sorted_azimuth, append=sorted_azimuth[:1] + 2 * math.pi)
    k = int(gaps.argmax())
    return order, k, gaps[k]


def orbit_path(c2w: torch.Tensor, n_frames: int) -> torch.Tensor:
    """A smooth camera path (n_frames, 4, 4) around the origin from the cameras (N, 4, 4).

    The path keeps the cameras' mean distance and elevation about their mean up direction. Its
    azimuth goes once round when the cameras surround the object (no azimuth gap over 180 degrees
    between them); otherwise it sweeps the covered arc there and back with eased ends.
    """
    up, e1, e2, azimuth = _azimuths(c2w)
    centres = c2w[:, :3, 3]
    radius = centres.norm(dim=-1).mean()
    elevation = torch.asin((F.normalize(centres, dim=-1) @ up).clamp(-1, 1)).mean()
    order, k, gap = _largest_gap(azimuth)
    i = torch.arange(n_frames, device=c2w.device, dtype=c2w.dtype)
    if gap <= math.pi:
        angles = 2 * math.pi * i / n_frames
    else:
        start, span = azimuth[order[(k + 1) % len(order)]], 2 * math.pi - gap
        angles = start + span * (1 - torch.cos(2 * math.pi * i / n_frames)) / 2
    dirs = torch.cos(elevation) * (torch.cos(angles)[:, None] * e1 + torch.sin(angles)[:, None] * e2) + torch.sin(elevation) * up
    return torch.stack([look_at(radius * d, up) for d in dirs])


def camera_path(c2w: torch.Tensor, n_frames: int) -> torch.Tensor:
    """A path (n_frames, 4, 4) through the cameras (N, 4, 4), taken in order of azimuth about their
    mean up direction from one side of the largest gap between them to the other; between
    consecutive cameras the rotation turns by quaternion slerp (Shoemake, "Animating Rotation with
    Quaternion Curves", SIGGRAPH 1985) and the centre follows the chord between them at a distance
    from the origin interpolated linearly, so the path does not dip towards the object. The first
    and last frames are the first and last cameras."""
    *_, azimuth = _azimuths(c2w)
    order, k, _ = _largest_gap(azimuth)
    poses = c2w[torch.roll(order, -(k + 1))]
    if len(poses) == 1:
        return poses.expand(n_frames, 4, 4).clone()
    t = torch.linspace(0, len(poses) - 1, n_frames, device=c2w.device, dtype=c2w.dtype)
    i = t.floor().long().clamp(max=len(poses) - 2)
    s = (t - i)[:, None]
    q = matrix_to_quaternion(poses[:, :3, :3])
    q0, q1 = q[i], q[i + 1]
    q1 = torch.where((q0 * q1).sum(-1, keepdim=True) < 0, -q1, q1)  # the shorter way round
    angle = torch.acos((q0 * q1).sum(-1, keepdim=True).clamp(-1, 1))
    sin = torch.sin(angle)
    small = sin < 1e-6
    w0 = torch.where(small, 1 - s, torch.sin((1 - s) * angle) / torch.where(small, 1, sin))
    w1 = torch.where(small, s, torch.sin(s * angle) / torch.where(small, 1, sin))
    out = torch.eye(4, device=c2w.device, dtype=c2w.dtype).repeat(n_frames, 1, 1)
    out[:, :3, :3] = quaternion_to_matrix(w0 * q0 + w1 * q1)
    c0, c1 = poses[i, :3, 3], poses[i + 1, :3, 3]
    centre = (1 - s) * c0 + s * c1
    distance = (1 - s) * c0.norm(dim=-1, keepdim=True) + s * c1.norm(dim=-1, keepdim=True)
    out[:, :3, 3] = centre * distance / centre.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return out


def scaled_view(system: BaseSystem, view: int, max_side: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Intrinsics (3, 3) and c2w (4, 4) of ``view`` scaled so that the longer image side is
    ``max_side`` pixels (never enlarged); H and W are even (as H.264 wants), the longer one exact."""
    h, w = system.scene.hw
    scale = min(1.0, max_side / max(h, w))
    height, width = 2 * max(1, round(h * scale / 2)), 2 * max(1, round(w * scale / 2))
    intrinsics, c2w = system.cameras(torch.tensor([view], device=system.device))
    k = intrinsics[0].clone()
    k[0] *= width / w
    k[1] *= height / h
    return k, c2w[0], height, width


@torch.no_grad()
def render_frames(system: BaseSystem, intrinsics: torch.Tensor, path: torch.Tensor, height: int, width: int) -> dict[str, np.ndarray]:
    """Render the camera path (N, 4, 4) with the system's own renderer (``render_rays``, evaluation
    background) at intrinsics (3, 3); returns uint8 ``rgb`` and ``normal`` frames, (N, H, W, 3) each.
    A progress bar with an ETA counts the frames (on stderr)."""
    frames: dict[str, list[np.ndarray]] = {"rgb": [], "normal": []}
    for c2w in tqdm(path, desc=f"video frames {width}x{height}", unit="frame"):
        images = visualise(system.render_image(intrinsics, c2w, height, width))
        for key in frames:
            frames[key].append(images[key])
    return {key: np.stack(value) for key, value in frames.items()}


def write_video(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Encode uint8 frames (N, H, W, 3), H and W even, as an H.264 MP4 (imageio-ffmpeg) and write it atomically."""
    data = iio.imwrite("<bytes>", frames, extension=".mp4", fps=fps, macro_block_size=2)
    atomic_write(path, data)
    return Path(path)


def render_videos(system: BaseSystem, out_dir: str | Path, settings: Video) -> list[Path]:
    """Write ``{turntable,cameras}_{rgb,normal}.mp4`` to ``out_dir``: ``settings.path`` chooses the turntable
    (:func:`orbit_path`), the path through the training cameras (:func:`camera_path`) or both;
    ``settings.frames`` frames at ``settings.fps``, the longer side ``settings.size`` pixels (the section checked
    these values). Returns the paths written."""
    frames, fps, size, path = settings.frames, settings.fps, settings.size, settings.path
    train = torch.as_tensor(system.scene.train_ids, device=system.device)
    c2w = system.cameras(train)[1].detach()
    k, _, height, width = scaled_view(system, int(train[0]), size)
    paths = {"turntable": orbit_path, "cameras": camera_path}
    written = []
    for name in paths if path == "both" else (path,):
        rendered = render_frames(system, k, paths[name](c2w, frames), height, width)
        written += [write_video(Path(out_dir) / f"{name}_{key}.mp4", video, fps) for key, video in rendered.items()]
    return written
