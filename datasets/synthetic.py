"""The project's default scene: a textured object with an analytic SDF, rendered to the NeuS layout.

``shape`` picks the object (normalised frame, inside the sphere of radius BOUND_RADIUS), each with its own
procedural albedo:

- ``sphere_torus`` (the default): a polynomial smooth union (Quilez, "smooth minimum") of a sphere and a
  torus around the z axis; the crease where they meet is a concavity.
- ``box_ellipsoid``: a tilted rounded box smoothly joined to an off-centre ellipsoid; no symmetry axis.
- ``handle``: a rounded cylinder with a thin (0.09) ring handle on its side; thin parts and a through hole.
- ``bowl``: a tilted spherical shell cut open above its equator; a deep concavity with 0.1-thick walls.
- ``pierced_block``: a tilted rounded slab with a round hole through it and a hard black-and-white checker: a
  through-hole, flat faces and a high-contrast texture that a reconstruction must not press into the geometry.

Views are rendered by sphere tracing (Hart, "Sphere tracing", The Visual Computer 1996) with 2x2
supersampling; the ground-truth mesh is extracted with marching cubes (Lorensen & Cline, SIGGRAPH 1987).
The world frame is DTU-like (millimetres): ``world = scale_mat @ normalised``.

``generate_sequence`` renders a dynamic scene for frame-by-frame training (see datasets.sequence): one of these
objects, scaled, twisted (non-rigid) and moved rigidly from frame to frame in front of fixed cameras.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh
from PIL import Image

from core.errors import InputError
from core.geometry import image_rays, look_at
from core.io import atomic_folder
from core.tracing import sdf_normals, sphere_trace
from datasets.npz import load_npz_scene
from datasets.scene import Scene
from datasets.sequence import SEQUENCE_FILE, Sequence, load_sequence

FORMAT_VERSION = 2
SEQUENCE_FORMAT_VERSION = 1
DEFAULT_SHAPE = "sphere_torus"
SPHERE_CENTRE, SPHERE_RADIUS = (0.0, 0.0, 0.15), 0.40
TORUS_CENTRE, TORUS_RADII = (0.0, 0.0, -0.12), (0.50, 0.16)  # major radius around z, tube radius
BLEND = 0.08  # smooth-min width
# box_ellipsoid; a tilt is (rotation axis, degrees) about the part's centre
BOX_CENTRE, BOX_HALF_SIZE, BOX_ROUNDING = (-0.14, 0.06, -0.08), (0.36, 0.26, 0.22), 0.06
BOX_TILT = ((0.3, 1.0, 0.4), 30.0)
ELLIPSOID_CENTRE, ELLIPSOID_RADII, ELLIPSOID_TILT = (0.20, -0.12, 0.16), (0.36, 0.22, 0.17), ((1.0, 0.0, 0.5), -40.0)
BOX_BLEND = 0.06
# handle: a can around z, and a ring in the xz plane (major radius, tube radius) on its +x side
CAN_CENTRE, CAN_RADIUS, CAN_HALF_HEIGHT, CAN_ROUNDING = (-0.08, 0.0, 0.0), 0.32, 0.44, 0.05
HANDLE_CENTRE, HANDLE_RADII, HANDLE_BLEND = (0.24, 0.0, 0.02), (0.33, 0.045), 0.03
# bowl: a shell of sphere radius BOWL_RADIUS, cut by the plane BOWL_CUT above its centre, half wall thickness BOWL_WALL
BOWL_CENTRE, BOWL_RADIUS, BOWL_CUT, BOWL_WALL, BOWL_TILT = (0.0, 0.0, 0.10), 0.52, 0.20, 0.05, ((1.0, 1.0, 0.0), 20.0)
# pierced_block: a rounded slab (half sizes), and the radius and local (x, y) centre of a hole along its local z
BLOCK_CENTRE, BLOCK_HALF_SIZE, BLOCK_ROUNDING = (0.0, 0.0, 0.02), (0.44, 0.40, 0.15), 0.04
BLOCK_TILT, HOLE_RADIUS, HOLE_CENTRE = ((1.0, -0.4, 0.0), 40.0), 0.16, (0.10, 0.02)
LIGHT_DIR = (0.40, -0.30, 0.866)  # towards the light, world/normalised frame (z up)
CAMERA_DISTANCE = 3.0
FOV_Y_DEG = 35.0
ELEVATIONS_DEG = (-30.0, 60.0)  # some views from below, so every part of the GT surface is observed
WORLD_TRANSLATION = (15.0, -30.0, 550.0)
MESH_RESOLUTION = 256
SUPERSAMPLE = 2
BOUND_RADIUS = 0.7  # every shape lies inside this sphere (max radius 0.675, sphere_torus): rays start on it
_HIT_EPS, _GRAZE_EPS, _MAX_STEPS = 1e-4, 1e-3, 100
# moving sequences: the translation path's plane (see sequence_motions)
SEQUENCE_PATH = ((1.0, 0.0, 0.0), (0.0, 0.6, 0.8))
Field = Callable[[torch.Tensor], torch.Tensor]  # a function of (P, 3) normalised points: an SDF or an albedo


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """(3, 3) rotation about ``axis`` by ``degrees`` (Rodrigues' formula)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * cross + (1.0 - math.cos(a)) * cross @ cross


def _local(points: torch.Tensor, centre: tuple[float, float, float], tilt: tuple[tuple, float]) -> torch.Tensor:
    """(P, 3) -> (P, 3) coordinates in the frame of a part placed at ``centre`` and rotated by ``tilt``."""
    return (points - points.new_tensor(centre)) @ points.new_tensor(_rotation(*tilt))


def _smooth_min(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Polynomial smooth minimum of two distances (blend width k); 1-Lipschitz when a and b are."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _torus(q: torch.Tensor, major: float, tube: float) -> torch.Tensor:
    """Exact torus around the local z axis (Quilez, "distance functions": sdTorus), (P, 3) -> (P,)."""
    ring = torch.stack([q[:, :2].norm(dim=-1) - major, q[:, 2]], dim=-1)
    return ring.norm(dim=-1) - tube


def _rounded_box(q: torch.Tensor, half_size: tuple[float, float, float], rounding: float) -> torch.Tensor:
    """Exact rounded box (Quilez, "distance functions": sdRoundBox), (P, 3) -> (P,)."""
    d = q.abs() - q.new_tensor(half_size) + rounding
    return d.clamp_min(0.0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0.0) - rounding


def _rounded_cylinder(q: torch.Tensor, radius: float, half_height: float, rounding: float) -> torch.Tensor:
    """Exact cylinder around the local z axis with rounded rims (Quilez: sdCappedCylinder, rounded), (P, 3) -> (P,)."""
    d = torch.stack([q[:, :2].norm(dim=-1), q[:, 2].abs()], dim=-1) - q.new_tensor([radius, half_height]) + rounding
    return d.clamp_min(0.0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0.0) - rounding


def _ellipsoid(q: torch.Tensor, radii: tuple[float, float, float]) -> torch.Tensor:
    """Axis-aligned ellipsoid (P, 3) -> (P,): min(radii) (|q / radii| - 1), 1-Lipschitz and zero on the surface.

    A lower bound of the distance (which has no closed form; Quilez, "ellipsoid SDF"), hence safe to sphere trace.
    """
    return min(radii) * ((q / q.new_tensor(radii)).norm(dim=-1) - 1.0)


def _sphere_torus_sdf(points: torch.Tensor) -> torch.Tensor:
    """Smooth union of a sphere and a torus around z, (P, 3) -> (P,).

    Exact away from the sphere/torus crease; within the smooth-min band it is a 1-Lipschitz lower bound
    (the gradient norm drops to about 0.35 on the surface there), so sphere tracing stays safe.
    """
    sphere = (points - points.new_tensor(SPHERE_CENTRE)).norm(dim=-1) - SPHERE_RADIUS
    return _smooth_min(sphere, _torus(points - points.new_tensor(TORUS_CENTRE), *TORUS_RADII), BLEND)


def _box_ellipsoid_sdf(points: torch.Tensor) -> torch.Tensor:
    """Smooth union of a tilted rounded box and an off-centre tilted ellipsoid, (P, 3) -> (P,); a 1-Lipschitz bound."""
    box = _rounded_box(_local(points, BOX_CENTRE, BOX_TILT), BOX_HALF_SIZE, BOX_ROUNDING)
    return _smooth_min(box, _ellipsoid(_local(points, ELLIPSOID_CENTRE, ELLIPSOID_TILT), ELLIPSOID_RADII), BOX_BLEND)


def _handle_sdf(points: torch.Tensor) -> torch.Tensor:
    """A rounded cylinder ("can") with a ring handle in the xz plane on its +x side, (P, 3) -> (P,)."""
    can = _rounded_cylinder(points - points.new_tensor(CAN_CENTRE), CAN_RADIUS, CAN_HALF_HEIGHT, CAN_ROUNDING)
    ring = _torus((points - points.new_tensor(HANDLE_CENTRE))[:, [0, 2, 1]], *HANDLE_RADII)  # ring axis: y
    return _smooth_min(can, ring, HANDLE_BLEND)


def _bowl_sdf(points: torch.Tensor) -> torch.Tensor:
    """Exact thick spherical shell cut open at height BOWL_CUT (Quilez: sdCutHollowSphere), tilted, (P, 3) -> (P,)."""
    q = _local(points, BOWL_CENTRE, BOWL_TILT)
    rho, z = q[:, :2].norm(dim=-1), q[:, 2]
    rim_rho = math.sqrt(BOWL_RADIUS**2 - BOWL_CUT**2)
    to_rim = torch.stack([rho - rim_rho, z - BOWL_CUT], dim=-1).norm(dim=-1)
    shell = (q.norm(dim=-1) - BOWL_RADIUS).abs()
    return torch.where(BOWL_CUT * rho < rim_rho * z, to_rim, shell) - BOWL_WALL


def _pierced_block_sdf(points: torch.Tensor) -> torch.Tensor:
    """A tilted rounded slab minus a cylinder through its thin axis (a through-hole), (P, 3) -> (P,); a 1-Lipschitz bound."""
    q = _local(points, BLOCK_CENTRE, BLOCK_TILT)
    slab = _rounded_box(q, BLOCK_HALF_SIZE, BLOCK_ROUNDING)
    hole = HOLE_RADIUS - (q[:, :2] - q.new_tensor(HOLE_CENTRE)).norm(dim=-1)
    return torch.maximum(slab, hole)


def _mix(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Three patterns in [-1, 1] -> (P, 3) colours in [0.15, 0.9]."""
    return 0.525 + 0.375 * torch.stack([a, b, c], -1)


def _sphere_torus_albedo(points: torch.Tensor) -> torch.Tensor:
    """A checker in xy mixed with slanted bands, (P, 3) -> (P, 3)."""
    x, y, z = points.unbind(-1)
    checker = torch.sin(11.0 * x + 1.0) * torch.sin(11.0 * y + 2.0)
    bands = torch.sin(13.0 * z + 4.0 * x)
    stripes = torch.sin(9.0 * y - 6.0 * z + 0.5)
    return _mix(0.7 * checker + 0.3 * bands, 0.3 * checker - 0.7 * bands, 0.5 * stripes - 0.5 * checker)


def _box_ellipsoid_albedo(points: torch.Tensor) -> torch.Tensor:
    """A sharpened 3D checker over fine diagonal stripes, (P, 3) -> (P, 3)."""
    x, y, z = points.unbind(-1)
    dots = torch.tanh(4.0 * torch.sin(16.0 * x) * torch.sin(16.0 * y + 1.0) * torch.sin(16.0 * z + 2.0))
    stripes = torch.sin(23.0 * (x + y - z))
    return _mix(0.6 * dots + 0.4 * stripes, 0.8 * dots - 0.2 * stripes, 0.3 * stripes - 0.5 * dots)


def _handle_albedo(points: torch.Tensor) -> torch.Tensor:
    """Concentric shells about the origin, slanted rings and wavy bands, (P, 3) -> (P, 3)."""
    x, y, z = points.unbind(-1)
    shells = torch.sin(19.0 * points.norm(dim=-1))
    rings = torch.sin(21.0 * z + 3.0 * y)
    waves = torch.sin(7.0 * x + 2.0 * torch.sin(8.0 * y))
    return _mix(0.3 * shells - 0.6 * rings, 0.5 * waves + 0.4 * shells, 0.7 * rings + 0.3 * waves)


def _bowl_albedo(points: torch.Tensor) -> torch.Tensor:
    """A plaid of two slanted stripe families with a fine diagonal hatch, (P, 3) -> (P, 3)."""
    x, y, z = points.unbind(-1)
    u = torch.sin(17.0 * x + 5.0 * z)
    v = torch.sin(17.0 * y - 4.0 * z + 1.0)
    fine = torch.sin(31.0 * (x - y))
    return _mix(0.5 * u - 0.3 * v + 0.2 * fine, 0.4 * u + 0.5 * v, -0.6 * u * v + 0.3 * fine)


def _pierced_block_albedo(points: torch.Tensor) -> torch.Tensor:
    """A hard-edged dark-and-light 3D checker (cells about 0.2 wide), (P, 3) -> (P, 3) grey levels 0.16 and 0.89
    (inside the range of every built-in texture)."""
    x, y, z = points.unbind(-1)
    cells = torch.tanh(30.0 * torch.sin(15.0 * x + 0.3) * torch.sin(15.0 * y + 1.1) * torch.sin(15.0 * z + 2.0))
    return _mix(*[0.98 * cells] * 3)


SHAPES = {  # name: (SDF, albedo), both of normalised points
    "sphere_torus": (_sphere_torus_sdf, _sphere_torus_albedo),
    "box_ellipsoid": (_box_ellipsoid_sdf, _box_ellipsoid_albedo),
    "handle": (_handle_sdf, _handle_albedo),
    "bowl": (_bowl_sdf, _bowl_albedo),
    "pierced_block": (_pierced_block_sdf, _pierced_block_albedo),
}
SHAPE_RADII = {"sphere_torus": 0.675, "box_ellipsoid": 0.625, "handle": 0.62, "bowl": 0.645, "pierced_block": 0.61}  # bounds of |p|


def _check_shape(shape: str) -> None:
    """Raise InputError for a name that is not in SHAPES."""
    if shape not in SHAPES:
        raise InputError("dataset.shape", f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def scene_sdf(points: torch.Tensor, shape: str = DEFAULT_SHAPE) -> torch.Tensor:
    """Signed distance (P, 3) -> (P,) of ``shape`` in the normalised frame (negative inside); 1-Lipschitz."""
    _check_shape(shape)
    return SHAPES[shape][0](points)


def albedo(points: torch.Tensor, shape: str = DEFAULT_SHAPE) -> torch.Tensor:
    """Smooth procedural colour (P, 3) -> (P, 3) in [0.15, 0.9] of ``shape``."""
    _check_shape(shape)
    return SHAPES[shape][1](points)


def _render(K: np.ndarray, c2w: np.ndarray, width: int, height: int, sdf: Field, colours: Field
            ) -> tuple[np.ndarray, np.ndarray]:
    """One view of the surface of ``sdf`` (P, 3) -> (P,) (a distance lower bound) with albedo ``colours``
    (P, 3) -> (P, 3): (H, W, 3) shaded colour on black and (H, W) coverage, both averaged over 2x2 subpixels."""
    s = SUPERSAMPLE
    K_sub = K.copy()
    K_sub[:2] *= s  # subpixel grid: pixel u spans subpixels [s u, s u + s)
    rays = image_rays(torch.from_numpy(K_sub).float(), torch.from_numpy(c2w).float(), height * s, width * s)
    t, hit = sphere_trace(sdf, rays.origins, rays.directions, BOUND_RADIUS, _HIT_EPS, _GRAZE_EPS, _MAX_STEPS)
    points = rays.origins[hit] + t[hit, None] * rays.directions[hit]
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR), dim=0)
    shade = 0.25 + 0.75 * (sdf_normals(sdf, points, h=1e-3) @ light).clamp_min(0.0)
    colour = torch.zeros(hit.shape[0], 3)
    colour[hit] = colours(points) * shade[:, None]
    colour = colour.reshape(height, s, width, s, 3).mean(dim=(1, 3))
    coverage = hit.float().reshape(height, s, width, s).mean(dim=(1, 3))
    return colour.numpy(), coverage.numpy()


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
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return K, np.stack([look_at(torch.from_numpy(CAMERA_DISTANCE * d), up).numpy() for d in dirs])


def _gt_mesh(scale_mat: np.ndarray, sdf: Field) -> trimesh.Trimesh:
    """Marching-cubes mesh of ``sdf`` (P, 3) -> (P,) on a grid over [-1, 1]^3, outward faces, world coordinates."""
    n = MESH_RESOLUTION
    axis = torch.linspace(-1.0, 1.0, n)
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(1, -1, 2)
    volume = np.concatenate([  # 16 x-slices at a time keeps memory small
        sdf(torch.cat([xs[:, None, None].expand(-1, n * n, 1), yz.expand(len(xs), -1, -1)], -1).reshape(-1, 3))
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


def _write_scene(folder: Path, params: dict, sdf: Field, colours: Field) -> None:
    """Render every view of the object (``sdf``, albedo ``colours``; see _render) and write the NeuS-layout files
    into an existing empty ``folder``."""
    K, c2ws = camera_rig(params["n_views"], params["width"], params["height"])
    scale_mat = np.diag([params["world_scale"]] * 3 + [1.0])
    scale_mat[:3, 3] = WORLD_TRANSLATION
    (folder / "image").mkdir()
    (folder / "mask").mkdir()
    cameras = {}
    for i, c2w in enumerate(c2ws):
        colour, coverage = _render(K, c2w, params["width"], params["height"], sdf, colours)
        Image.fromarray(np.round(colour * 255.0).clip(0, 255).astype(np.uint8)).save(folder / "image" / f"{i:03d}.png")
        Image.fromarray(np.where(coverage > 0.5, 255, 0).astype(np.uint8)).save(folder / "mask" / f"{i:03d}.png")
        world_mat = np.eye(4)
        world_mat[:3, :3] = K
        world_mat = world_mat @ np.linalg.inv(scale_mat @ c2w)  # projection of world points, as in DTU
        cameras |= {f"world_mat_{i}": world_mat, f"world_mat_inv_{i}": np.linalg.inv(world_mat),
                    f"scale_mat_{i}": scale_mat, f"scale_mat_inv_{i}": np.linalg.inv(scale_mat)}
    _save_npz(folder / "cameras_sphere.npz", cameras)
    _gt_mesh(scale_mat, sdf).export(folder / "gt_mesh.ply")
    (folder / "scene.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _scene_params(n_views: int, width: int, height: int, world_scale: float, shape: str) -> dict:
    """Check a scene's parameters (InputError naming dataset.KEY); returns what its scene.json records of them."""
    for key, value, low in (("n_views", n_views, 1), ("width", width, 8), ("height", height, 8)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"dataset.{key}", f"must be an integer >= {low}, got {value!r}")
    if not world_scale > 0:
        raise InputError("dataset.world_scale", f"must be > 0, got {world_scale!r}")
    _check_shape(shape)
    return {"format_version": FORMAT_VERSION, "n_views": n_views, "width": width, "height": height,
            "world_scale": float(world_scale), "world_translation": WORLD_TRANSLATION,
            "camera_distance": CAMERA_DISTANCE, "fov_y_deg": FOV_Y_DEG, "elevations_deg": ELEVATIONS_DEG,
            "light_dir": LIGHT_DIR, "supersample": SUPERSAMPLE, "mesh_resolution": MESH_RESOLUTION}


def _write_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill the folder that then appears as ``out_dir`` (:func:`core.io.atomic_folder`, never a half
    scene), on one torch thread. If ``out_dir`` appears meanwhile (a concurrent generation), it is kept: generation
    is deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small kernels: one thread is faster, and several thrash on a busy CPU
    try:
        with atomic_folder(out_dir, keep_concurrent=True) as folder:
            write(folder)
    finally:
        torch.set_num_threads(threads)


def _generate(out_dir: Path, n_views: int, width: int, height: int, world_scale: float, shape: str) -> None:
    """Write the static scene of ``shape`` to ``out_dir`` atomically (see _write_atomically)."""
    params = _scene_params(n_views, width, height, world_scale, shape)
    # The default shape keeps its original entries (and scene.json bytes); the others record their name.
    params |= ({"sphere": [SPHERE_CENTRE, SPHERE_RADIUS], "torus": [TORUS_CENTRE, TORUS_RADII], "blend": BLEND}
               if shape == DEFAULT_SHAPE else {"shape": shape})
    _write_atomically(out_dir, lambda folder: _write_scene(folder, params, *SHAPES[shape]))


def generate_scene(
    out_dir: str, n_views: int = 32, width: int = 200, height: int = 150, world_scale: float = 100.0,
    shape: str = DEFAULT_SHAPE,
) -> str:
    """Render the synthetic scene into a new folder ``out_dir`` (NeuS layout + gt_mesh.ply + scene.json)."""
    if Path(out_dir).exists():
        raise InputError(str(out_dir), "already exists; generate_scene writes a new folder")
    _generate(Path(out_dir), n_views, width, height, world_scale, shape)
    return str(out_dir)


def scene_name(shape: str = DEFAULT_SHAPE) -> str:
    """``synthetic`` for the default shape, ``synthetic_<shape>`` for the others."""
    return "synthetic" if shape == DEFAULT_SHAPE else f"synthetic_{shape}"


def cache_folder(cache_dir: str, n_views: int, width: int, height: int, world_scale: float,
                 shape: str = DEFAULT_SHAPE) -> Path:
    """``cache_dir/<scene_name>_<hash>``, the hash covering the parameters and the format version.

    The default shape is left out of the hash, so its folder keeps the name it had before shapes existed.
    """
    key = [FORMAT_VERSION, n_views, width, height, float(world_scale)] + ([] if shape == DEFAULT_SHAPE else [shape])
    return Path(cache_dir) / f"{scene_name(shape)}_{hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]}"


def load_synthetic_scene(
    cache_dir: str,
    n_views: int = 32,
    width: int = 200,
    height: int = 150,
    world_scale: float = 100.0,
    test_every: int = 8,
    test_views: list[int] | None = None,
    shape: str = DEFAULT_SHAPE,
    use_masks: bool = True,
) -> Scene:
    """The synthetic scene of ``shape``, generated into ``cache_dir`` on first use and loaded from there afterwards;
    ``use_masks``: whether training may use its masks."""
    folder = cache_folder(cache_dir, n_views, width, height, world_scale, shape)
    if not folder.is_dir():
        _generate(folder, n_views, width, height, world_scale, shape)
    return load_npz_scene(str(folder), test_views=test_views, test_every=test_every,
                          gt_path=str(folder / "gt_mesh.ply"), name=scene_name(shape), use_masks=use_masks)


def sequence_motions(n_frames: int, rotation_deg: float, translation: float) -> np.ndarray:
    """(F, 4, 4) rigid object-to-world motions of the synthetic sequence, in the normalised frame.

    Frame i turns about the world z axis by ``rotation_deg * i`` degrees and moves along a half circle from the
    origin to ``translation * e1``: t = (translation / 2) ((1 - cos pi s) e1 + sin pi s e2) with s = i / (F - 1)
    and e1, e2 = SEQUENCE_PATH, so |t| = translation sin(pi s / 2) <= translation. Frame 0 is the identity.
    """
    s = np.arange(n_frames) / max(n_frames - 1, 1)
    e1, e2 = (np.asarray(e, dtype=np.float64) for e in SEQUENCE_PATH)
    motions = np.tile(np.eye(4), (n_frames, 1, 1))
    for i in range(n_frames):
        motions[i, :3, :3] = _rotation((0.0, 0.0, 1.0), rotation_deg * i)
        motions[i, :3, 3] = 0.5 * translation * ((1.0 - math.cos(math.pi * s[i])) * e1 + math.sin(math.pi * s[i]) * e2)
    return motions


def _moving_object(shape: str, size: float, motion: np.ndarray, rate: float, reach: float) -> tuple[Field, Field]:
    """(SDF, albedo) of one frame: ``shape`` scaled by ``size``, twisted about its z axis by ``rate * z`` radians,
    then moved by ``motion`` (4, 4); the albedo is the shape's at the canonical (untwisted, unmoved) point.

    The twist's Jacobian is a rotation times a shear of magnitude a = |rate| rho (rho: the distance to the z axis),
    whose largest singular value is a / 2 + sqrt(1 + a^2 / 4) (more than sqrt(1 + a^2)). The SDF is divided by
    it at rho = ``reach``, a bound of |p - t| wherever the tracer evaluates it, so it stays a distance lower bound.
    """
    sdf, colours = SHAPES[shape]
    a = abs(rate) * reach
    lipschitz = 0.5 * a + math.sqrt(1.0 + 0.25 * a * a)

    def canonical(points: torch.Tensor) -> torch.Tensor:
        """(P, 3) normalised points -> (P, 3) points of the unscaled shape."""
        local = (points - points.new_tensor(motion[:3, 3])) @ points.new_tensor(motion[:3, :3])  # R^T (p - t)
        angle = -rate * local[:, 2]
        cos, sin = angle.cos(), angle.sin()
        x, y, z = local.unbind(-1)
        return torch.stack([cos * x - sin * y, sin * x + cos * y, z], dim=-1) / size

    return (lambda points: sdf(canonical(points)) * (size / lipschitz)), (lambda points: colours(canonical(points)))


def _sequence_params(n_frames: int, n_views: int, width: int, height: int, world_scale: float, shape: str,
                     size: float, rotation_deg: float, translation: float, twist: float) -> dict:
    """Check a sequence's parameters (InputError naming dataset.KEY); returns what its sequence.json records."""
    params = _scene_params(n_views, width, height, world_scale, shape)
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise InputError("dataset.n_frames", f"must be an integer >= 1, got {n_frames!r}")
    for key, value in (("size", size), ("rotation_deg", rotation_deg), ("translation", translation), ("twist", twist)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"dataset.{key}", f"must be a finite number, got {value!r}")
    if size <= 0:
        raise InputError("dataset.size", f"must be > 0, got {size!r}")
    if translation < 0:
        raise InputError("dataset.translation", f"must be >= 0, got {translation!r}")
    reach = SHAPE_RADII[shape] * size + translation
    if reach > BOUND_RADIUS:
        raise InputError("dataset.size", f"the moving object reaches radius {reach:.3f} (shape radius "
                                         f"{SHAPE_RADII[shape]} * size {size} + translation {translation}), beyond "
                                         f"the bounding sphere's {BOUND_RADIUS}: reduce dataset.size or dataset.translation")
    return params | {"sequence_format_version": SEQUENCE_FORMAT_VERSION, "shape": shape, "n_frames": n_frames,
                     "size": float(size), "rotation_deg": float(rotation_deg), "translation": float(translation),
                     "twist": float(twist), "path": SEQUENCE_PATH}


def _generate_sequence(out_dir: Path, n_frames: int, n_views: int, width: int, height: int, world_scale: float,
                       shape: str, size: float, rotation_deg: float, translation: float, twist: float) -> None:
    """Write the sequence to ``out_dir`` atomically (see _write_atomically and generate_sequence)."""
    params = _sequence_params(n_frames, n_views, width, height, world_scale, shape, size, rotation_deg, translation,
                              twist)
    motions = sequence_motions(n_frames, rotation_deg, translation)
    rates = [twist * math.sin(2.0 * math.pi * i / n_frames) for i in range(n_frames)]

    def write(folder: Path) -> None:
        for i in range(n_frames):
            frame = folder / f"frame_{i:04d}"
            frame.mkdir()
            fields = _moving_object(shape, size, motions[i], rates[i], BOUND_RADIUS + translation)
            _write_scene(frame, params | {"frame": i, "twist_rate": rates[i]}, *fields)
        meta = params | {"twist_rates": rates, "motions": motions.tolist()}
        (folder / SEQUENCE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    _write_atomically(out_dir, write)


def generate_sequence(
    out_dir: str, n_frames: int = 20, n_views: int = 24, width: int = 160, height: int = 120,
    world_scale: float = 100.0, shape: str = "box_ellipsoid", size: float = 0.8, rotation_deg: float = 3.0,
    translation: float = 0.1, twist: float = 0.5,
) -> str:
    """Render a moving, deforming object into a new folder ``out_dir``: ``frame_NNNN/`` per frame, NeuS layout with
    its own gt_mesh.ply, all with the same cameras (camera_rig) and scale_mat, and ``sequence.json``.

    Frame i is ``shape`` scaled by ``size``, twisted about its own z axis by ``twist sin(2 pi i / n_frames) z``
    radians (the non-rigid part; none in frame 0), then moved rigidly by ``sequence_motions``; its texture moves
    with the surface. sequence.json holds the parameters, ``motions`` (F, 4, 4) and ``twist_rates`` (F,).
    """
    if Path(out_dir).exists():
        raise InputError(str(out_dir), "already exists; generate_sequence writes a new folder")
    _generate_sequence(Path(out_dir), n_frames, n_views, width, height, world_scale, shape, size, rotation_deg,
                       translation, twist)
    return str(out_dir)


def sequence_cache_folder(cache_dir: str, n_frames: int, n_views: int, width: int, height: int, world_scale: float,
                          shape: str, size: float, rotation_deg: float, translation: float, twist: float) -> Path:
    """``cache_dir/sequence_<shape>_<hash>``, the hash covering every parameter and both format versions."""
    key = [SEQUENCE_FORMAT_VERSION, FORMAT_VERSION, n_frames, n_views, width, height, float(world_scale), shape,
           float(size), float(rotation_deg), float(translation), float(twist)]
    return Path(cache_dir) / f"sequence_{shape}_{hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]}"


def load_synthetic_sequence(
    cache_dir: str, n_frames: int = 20, n_views: int = 24, width: int = 160, height: int = 120,
    world_scale: float = 100.0, shape: str = "box_ellipsoid", test_every: int = 8, test_views: list[int] | None = None,
    use_masks: bool = True, frames: list[int] | None = None, size: float = 0.8, rotation_deg: float = 3.0,
    translation: float = 0.1, twist: float = 0.5,
) -> Sequence:
    """The synthetic sequence (see generate_sequence), generated into ``cache_dir`` on first use; ``frames``: the
    frame indices to keep (None: all)."""
    args = (n_frames, n_views, width, height, world_scale, shape, size, rotation_deg, translation, twist)
    folder = sequence_cache_folder(cache_dir, *args)
    if not folder.is_dir():
        _generate_sequence(folder, *args)
    return load_sequence(str(folder), frames=frames, test_views=test_views, test_every=test_every,
                         use_masks=use_masks, name=f"sequence_{shape}")
