"""The project's default scene: a textured object with an analytic SDF, rendered to the NeuS layout.

The object (normalised frame, inside the unit sphere) is a polynomial smooth union (Quilez, "smooth
minimum") of a sphere and a torus around the z axis; the crease where they meet is a concavity.
Views are rendered by sphere tracing (Hart, "Sphere tracing", The Visual Computer 1996) with 2x2
supersampling; the ground-truth mesh is extracted with marching cubes (Lorensen & Cline, SIGGRAPH 1987).
The world frame is DTU-like (millimetres): ``world = scale_mat @ normalised``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh
from PIL import Image

from datasets.errors import InputError
from datasets.npz import load_npz_scene
from datasets.scene import Scene
from models.rays import image_rays, intersect_sphere

FORMAT_VERSION = 2
SPHERE_CENTRE, SPHERE_RADIUS = (0.0, 0.0, 0.15), 0.40
TORUS_CENTRE, TORUS_RADII = (0.0, 0.0, -0.12), (0.50, 0.16)  # major radius around z, tube radius
BLEND = 0.08  # smooth-min width
LIGHT_DIR = (0.40, -0.30, 0.866)  # towards the light, world/normalised frame (z up)
CAMERA_DISTANCE = 3.0
FOV_Y_DEG = 35.0
ELEVATIONS_DEG = (-30.0, 60.0)  # some views from below, so every part of the GT surface is observed
WORLD_TRANSLATION = (15.0, -30.0, 550.0)
MESH_RESOLUTION = 256
SUPERSAMPLE = 2
BOUND_RADIUS = 0.7  # the object lies inside this sphere (max radius 0.675): rays start on it
_HIT_EPS, _GRAZE_EPS, _MAX_STEPS = 1e-4, 1e-3, 100


def _smooth_min(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Polynomial smooth minimum of two distances (blend width k)."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def scene_sdf(points: torch.Tensor) -> torch.Tensor:
    """Signed distance (P, 3) -> (P,) of the object in the normalised frame (negative inside).

    Exact away from the sphere/torus crease; within the smooth-min band it is a 1-Lipschitz lower bound
    (the gradient norm drops to about 0.35 on the surface there), so sphere tracing stays safe.
    """
    sphere = (points - points.new_tensor(SPHERE_CENTRE)).norm(dim=-1) - SPHERE_RADIUS
    q = points - points.new_tensor(TORUS_CENTRE)
    ring = torch.stack([q[:, :2].norm(dim=-1) - TORUS_RADII[0], q[:, 2]], dim=-1)
    return _smooth_min(sphere, ring.norm(dim=-1) - TORUS_RADII[1], BLEND)


def albedo(points: torch.Tensor) -> torch.Tensor:
    """Smooth procedural colour (P, 3) -> (P, 3) in [0.15, 0.9]: a checker in xy mixed with slanted bands."""
    x, y, z = points.unbind(-1)
    checker = torch.sin(11.0 * x + 1.0) * torch.sin(11.0 * y + 2.0)
    bands = torch.sin(13.0 * z + 4.0 * x)
    stripes = torch.sin(9.0 * y - 6.0 * z + 0.5)
    mix = torch.stack([0.7 * checker + 0.3 * bands, 0.3 * checker - 0.7 * bands, 0.5 * stripes - 0.5 * checker], -1)
    return 0.525 + 0.375 * mix


def _normals(points: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """Unit SDF gradients (P, 3) by central differences."""
    offsets = torch.eye(3, dtype=points.dtype) * h
    grad = torch.stack([scene_sdf(points + o) - scene_sdf(points - o) for o in offsets], dim=-1)
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _sphere_trace(origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """March (R, 3) rays from their bounding-sphere entry; returns hit distances (R,) and hit flags (R,).

    Rays still marching after the step budget graze the silhouette; they count as hits when within _GRAZE_EPS.
    """
    t, far, active = intersect_sphere(origins, dirs, BOUND_RADIUS)
    dist = torch.full_like(t, math.inf)
    for _ in range(_MAX_STEPS):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        step = scene_sdf(origins[idx] + t[idx, None] * dirs[idx])
        t[idx] += step
        dist[idx] = step
        active[idx[(step < _HIT_EPS) | (t[idx] > far[idx])]] = False
    return t, (dist < _GRAZE_EPS) & (t <= far)


def _render(K: np.ndarray, c2w: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One view: (H, W, 3) shaded colour on black and (H, W) coverage, both averaged over 2x2 subpixels."""
    s = SUPERSAMPLE
    K_sub = K.copy()
    K_sub[:2] *= s  # subpixel grid: pixel u spans subpixels [s u, s u + s)
    rays = image_rays(torch.from_numpy(K_sub).float(), torch.from_numpy(c2w).float(), height * s, width * s)
    t, hit = _sphere_trace(rays.origins, rays.directions)
    points = rays.origins[hit] + t[hit, None] * rays.directions[hit]
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR), dim=0)
    shade = 0.25 + 0.75 * (_normals(points) @ light).clamp_min(0.0)
    colour = torch.zeros(hit.shape[0], 3)
    colour[hit] = albedo(points) * shade[:, None]
    colour = colour.reshape(height, s, width, s, 3).mean(dim=(1, 3))
    coverage = hit.float().reshape(height, s, width, s).mean(dim=(1, 3))
    return colour.numpy(), coverage.numpy()


def _look_at(centre: np.ndarray) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world at ``centre`` looking at the origin with world z up."""
    forward = -centre / np.linalg.norm(centre)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, np.cross(forward, right), forward], axis=1)
    c2w[:3, 3] = centre
    return c2w


def camera_rig(n_views: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics (3, 3) and (N, 4, 4) normalised-frame camera-to-world matrices of the synthetic views.

    Azimuths follow the golden-angle (Fibonacci) spiral; sin(elevation) is uniform in the band, so the
    cameras cover the band evenly and consecutive views climb in elevation.
    """
    focal = 0.5 * height / math.tan(math.radians(0.5 * FOV_Y_DEG))
    K = np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])
    i = np.arange(n_views)
    lo, hi = (math.sin(math.radians(e)) for e in ELEVATIONS_DEG)
    elevation = np.arcsin(lo + (hi - lo) * (i + 0.5) / n_views)
    azimuth = i * math.pi * (3.0 - math.sqrt(5.0))
    dirs = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], 1)
    return K, np.stack([_look_at(CAMERA_DISTANCE * d) for d in dirs])


def _gt_mesh(scale_mat: np.ndarray) -> trimesh.Trimesh:
    """Marching-cubes mesh of scene_sdf on a grid over [-1, 1]^3, outward faces, world coordinates."""
    n = MESH_RESOLUTION
    axis = torch.linspace(-1.0, 1.0, n)
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(1, -1, 2)
    volume = np.concatenate([  # 16 x-slices at a time keeps memory small
        scene_sdf(torch.cat([xs[:, None, None].expand(-1, n * n, 1), yz.expand(len(xs), -1, -1)], -1).reshape(-1, 3))
        .reshape(-1, n, n).numpy()
        for xs in axis.split(16)
    ])
    verts, faces = mcubes.marching_cubes(-volume, 0.0)  # mcubes orients faces outward for inside-positive fields
    verts = verts * (2.0 / (n - 1)) - 1.0
    return trimesh.Trimesh(verts @ scale_mat[:3, :3].T + scale_mat[:3, 3], faces, process=False)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(value), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())


def _write_scene(folder: Path, params: dict) -> None:
    """Render every view and write the NeuS-layout files into an existing empty ``folder``."""
    K, c2ws = camera_rig(params["n_views"], params["width"], params["height"])
    scale_mat = np.diag([params["world_scale"]] * 3 + [1.0])
    scale_mat[:3, 3] = WORLD_TRANSLATION
    (folder / "image").mkdir()
    (folder / "mask").mkdir()
    cameras = {}
    for i, c2w in enumerate(c2ws):
        colour, coverage = _render(K, c2w, params["width"], params["height"])
        Image.fromarray(np.round(colour * 255.0).clip(0, 255).astype(np.uint8)).save(folder / "image" / f"{i:03d}.png")
        Image.fromarray(np.where(coverage > 0.5, 255, 0).astype(np.uint8)).save(folder / "mask" / f"{i:03d}.png")
        world_mat = np.eye(4)
        world_mat[:3, :3] = K
        world_mat = world_mat @ np.linalg.inv(scale_mat @ c2w)  # projection of world points, as in DTU
        cameras |= {f"world_mat_{i}": world_mat, f"world_mat_inv_{i}": np.linalg.inv(world_mat),
                    f"scale_mat_{i}": scale_mat, f"scale_mat_inv_{i}": np.linalg.inv(scale_mat)}
    _save_npz(folder / "cameras_sphere.npz", cameras)
    _gt_mesh(scale_mat).export(folder / "gt_mesh.ply")
    (folder / "scene.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _generate(out_dir: Path, n_views: int, width: int, height: int, world_scale: float) -> None:
    """Write the scene to a temporary sibling folder, then rename it to ``out_dir`` (never a half scene).

    If ``out_dir`` appears meanwhile (a concurrent generation), it is kept: generation is deterministic.
    """
    for key, value, low in (("n_views", n_views, 1), ("width", width, 8), ("height", height, 8)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"dataset.{key}", f"must be an integer >= {low}, got {value!r}")
    if not world_scale > 0:
        raise InputError("dataset.world_scale", f"must be > 0, got {world_scale!r}")
    params = {"format_version": FORMAT_VERSION, "n_views": n_views, "width": width, "height": height,
              "world_scale": float(world_scale), "world_translation": WORLD_TRANSLATION,
              "camera_distance": CAMERA_DISTANCE, "fov_y_deg": FOV_Y_DEG, "elevations_deg": ELEVATIONS_DEG,
              "sphere": [SPHERE_CENTRE, SPHERE_RADIUS], "torus": [TORUS_CENTRE, TORUS_RADII], "blend": BLEND,
              "light_dir": LIGHT_DIR, "supersample": SUPERSAMPLE, "mesh_resolution": MESH_RESOLUTION}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small kernels: one thread is faster, and several thrash on a busy CPU
    try:
        _write_scene(tmp, params)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not out_dir.is_dir():
                raise
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)


def generate_scene(out_dir: str, n_views: int = 32, width: int = 200, height: int = 150, world_scale: float = 100.0) -> str:
    """Render the synthetic scene into a new folder ``out_dir`` (NeuS layout + gt_mesh.ply + scene.json)."""
    if Path(out_dir).exists():
        raise InputError(str(out_dir), "already exists; generate_scene writes a new folder")
    _generate(Path(out_dir), n_views, width, height, world_scale)
    return str(out_dir)


def cache_folder(cache_dir: str, n_views: int, width: int, height: int, world_scale: float) -> Path:
    """``cache_dir/synthetic_<hash>``, the hash covering the parameters and the format version."""
    key = json.dumps([FORMAT_VERSION, n_views, width, height, float(world_scale)])
    return Path(cache_dir) / f"synthetic_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def load_synthetic_scene(
    cache_dir: str,
    n_views: int = 32,
    width: int = 200,
    height: int = 150,
    world_scale: float = 100.0,
    test_every: int = 8,
    test_views: list[int] | None = None,
) -> Scene:
    """The synthetic scene, generated into ``cache_dir`` on first use and loaded from there afterwards."""
    folder = cache_folder(cache_dir, n_views, width, height, world_scale)
    if not folder.is_dir():
        _generate(folder, n_views, width, height, world_scale)
    return load_npz_scene(str(folder), test_views=test_views, test_every=test_every,
                          gt_path=str(folder / "gt_mesh.ply"), name="synthetic")
