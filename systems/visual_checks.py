"""Visual checks of SDF systems: the initial field (slices and a shaded render) and IDR's appearance
transfer, rendering one run's geometry with another run's rendering network (Yariv et al.,
"Multiview Neural Surface Reconstruction by Disentangling Geometry and Appearance", NeurIPS 2020).
"""
from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from core.errors import InputError
from core.geometry import image_rays
from core.tracing import SdfFn, sdf_normals
from models.ray_tracing import SphereTracer
from systems.base import BaseSystem
from systems.video import orbit_path, render_frames, scaled_view, write_video

BAND = 0.1  # spacing of the iso-distance bands of the slice images


def sdf_colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) SDF values -> (H, W, 3) uint8: blue inside, red outside, iso-bands every BAND, black zero contour."""
    scale = max(float(np.abs(values).max()), 1e-6)
    t = np.clip(values / scale, -1.0, 1.0)[..., None]
    white, red, blue = np.ones(3), np.array([0.85, 0.25, 0.1]), np.array([0.15, 0.35, 0.85])
    rgb = np.where(t > 0, white + t * (red - white), white - t * (blue - white))
    rgb *= (0.9 + 0.1 * np.cos(2.0 * math.pi * values / BAND))[..., None]
    inside = values < 0
    contour = np.zeros_like(inside)
    contour[:, :-1] |= inside[:, :-1] != inside[:, 1:]
    contour[:-1] |= inside[:-1] != inside[1:]
    rgb[contour] = 0.0
    return (rgb * 255).round().astype(np.uint8)


@torch.no_grad()
def sdf_slices(sdf_fn: SdfFn, resolution: int, device: torch.device | str = "cpu") -> np.ndarray:
    """SDF on the x=0, y=0 and z=0 planes of [-1, 1]^3, (3, resolution, resolution); rows run from
    +1 (top) to -1 along the vertical axis (z, z, y), columns from -1 to +1 (y, x, x)."""
    axis = torch.linspace(-1.0, 1.0, resolution, device=device)
    v, u = torch.meshgrid(-axis, axis, indexing="ij")
    zero = torch.zeros_like(u)
    planes = [torch.stack(p, -1) for p in ((zero, u, v), (u, zero, v), (u, v, zero))]
    return np.stack([sdf_fn(p.reshape(-1, 3)).reshape(resolution, resolution).cpu().numpy() for p in planes])


def lambert_render(sdf_fn: SdfFn, intrinsics: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
                   chunk: int = 4096) -> np.ndarray:
    """Sphere-traced zero level set, Lambert-shaded with a headlight; (H, W, 3) uint8 on dark grey.
    intrinsics (3, 3) and c2w (4, 4) at the output resolution."""
    rays = image_rays(intrinsics, c2w, height, width)
    tracer = SphereTracer(chunk=chunk * 16)
    image = torch.full((len(rays), 3), 0.1, device=c2w.device)
    for i in range(0, len(rays), chunk):
        o, d = rays.origins[i:i + chunk], rays.directions[i:i + chunk]
        traced = tracer(sdf_fn, o, d)
        if traced.hit.any():
            n = sdf_normals(sdf_fn, traced.points[traced.hit])
            shade = 0.15 + 0.85 * (n * -d[traced.hit]).sum(-1).clamp_min(0.0)
            image[i:i + chunk][traced.hit] = shade[:, None] * image.new_tensor([0.9, 0.85, 0.75])
    return (image.reshape(height, width, 3).cpu().numpy() * 255).round().astype(np.uint8)


def inspect_init(system: BaseSystem, out_dir: Path, resolution: int = 256) -> list[Path]:
    """Write ``sdf_slice.png`` (x=0 | y=0 | z=0 slices of the bounding cube, ``resolution`` pixels each)
    and ``init_render.png`` (the first training view, at most ``resolution`` pixels wide or high) of
    the system's current SDF. Works for any system with ``sdf``, ``cameras`` and ``scene``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slices = [sdf_colormap(s) for s in sdf_slices(system.sdf, resolution, system.device)]
    gap = np.full((resolution, 4, 3), 255, np.uint8)
    slice_path = out_dir / "sdf_slice.png"
    iio.imwrite(slice_path, np.concatenate([slices[0], gap, slices[1], gap, slices[2]], axis=1))
    k, c2w, h, w = scaled_view(system, int(system.scene.train_ids[0]), resolution)
    render_path = out_dir / "init_render.png"
    iio.imwrite(render_path, lambert_render(system.sdf, k, c2w, h, w, system.render_chunk))
    return [slice_path, render_path]


@torch.no_grad()
def transfer(geometry_system: BaseSystem, appearance_system: BaseSystem, out_dir: Path, n_frames: int = 30,
             fps: int = 15, resolution: int = 256) -> Path:
    """Render the geometry of one trained system (IDR or NeuS, with its own renderer) with the colour
    network of another along ``orbit_path`` of the geometry run's cameras (at most ``resolution``
    pixels wide or high). The geometry system's colour network is replaced by the other's.

    Writes ``frames/frame_###.png`` and ``transfer.mp4``; returns the video's path.
    """
    geometry, texture = geometry_system.model.geometry, appearance_system.model.texture
    if geometry.feature_dim != appearance_system.model.geometry.feature_dim:
        raise InputError("appearance_run", f"its geometry feature size {appearance_system.model.geometry.feature_dim} differs from "
                                           f"the geometry run's {geometry.feature_dim}; transfer needs runs with the same system.model.geometry.feature_dim")
    geometry_system.model.texture = texture
    k, _, h, w = scaled_view(geometry_system, 0, resolution)
    views = torch.arange(geometry_system.scene.n_views, device=geometry_system.device)
    frames = render_frames(geometry_system, k, orbit_path(geometry_system.cameras(views)[1], n_frames), h, w)["rgb"]
    out_dir = Path(out_dir)
    (out_dir / "frames").mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        iio.imwrite(out_dir / "frames" / f"frame_{i:03d}.png", frame)
    return write_video(out_dir / "transfer.mp4", frames, fps)
