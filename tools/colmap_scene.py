"""Photos (or a video) -> a NeuS-layout scene, by COLMAP structure from motion (Schönberger & Frahm, "Structure-from-Motion
Revisited", CVPR 2016) through pycolmap.

    python -m tools.colmap_scene IMAGES_DIR OUT_DIR [--camera-model SIMPLE_RADIAL] [--matcher exhaustive]
                                 [--masks MASK_DIR] [--max-size 3200] [--sparse SPARSE_DIR]
                                 [--refine-principal-point] [--verbose]
    python -m tools.colmap_scene --video CLIP.mp4 OUT_DIR [--frames 60] [--frame-size N] [...]

A video is first cut into ``--frames`` even segments and the sharpest frame of each (:func:`extract_frames`) is
written to ``OUT_DIR/frames/frame_NNNNNN.png`` (NNNNNN: its index in the clip); these are the photos, matched
with the sequential matcher unless ``--matcher`` says otherwise.

SIFT features, exhaustive (or sequential) matching and incremental mapping into ``OUT_DIR/colmap/``
(``database.db``, ``sparse/K``; the model with the most registered images is used), or an existing COLMAP
model given by ``--sparse`` (e.g. ``sparse/0``; SfM is skipped). ``--refine-principal-point`` adds a last
bundle adjustment that also refines the principal point (a given model is refined in a copy,
``OUT_DIR/colmap/sparse/0``). All photos share one camera. With a distortion model (SIMPLE_RADIAL, OPENCV)
images (and masks) are undistorted into a pinhole camera. Then:

- ``OUT_DIR/image/000.png ...``: the registered images in file-name order (``mask/`` likewise with ``--masks``;
  masks are carried to the output for evaluation or training, never used by SfM);
- ``OUT_DIR/cameras_sphere.npz``: ``world_mat_i`` (projection of COLMAP world points) and ``scale_mat_i``
  (normalised -> COLMAP world), the same for every view (:func:`normalisation`);
- ``OUT_DIR/colmap_images.json``: our index -> original file name, the unregistered images and the normalisation
  (from a video also the clip, its frame count, and the kept frames' indices and sharpness);
- ``OUT_DIR/frames/``: from a video, the kept frames as extracted (the photos SfM saw, for a later ``--sparse``).

The scene is built in a temporary sibling folder and renamed to ``OUT_DIR`` at the end, so a failed run leaves
nothing behind; ``OUT_DIR`` must be new or empty. Too few images, or too few registered by SfM, stop with one
line ``error: <folder>: <problem>`` and exit status 2.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from core.errors import InputError
from core.io import atomic_folder, atomic_write
from datasets.npz import list_images, read_image
from models.cameras import axes_meeting_point
from systems.mesh_io import save_cameras

CAMERA_MODELS = ("PINHOLE", "SIMPLE_RADIAL", "OPENCV")
MATCHERS = ("exhaustive", "sequential")
DEFAULT_FRAMES = 60  # frames kept from a video
MIN_IMAGES = 3
MIN_REGISTERED_FRACTION = 0.5  # fewer registered images than this share of the photos is a failure
MAX_REPROJECTION_ERROR = 2.0  # pixels: sparse points used for the normalisation ...
MIN_TRACK_LENGTH = 3  # ... and the fewest images that must see them
MIN_POINTS = 20
RADIUS_PERCENTILE, RADIUS_MARGIN = 99.0, 1.2  # the sparse points stop short of the silhouette: keep a margin
CAMERA_CLEARANCE = 2.0  # the sphere's radius is at most the nearest camera's distance to its centre / this


@dataclass
class Normalisation:
    """The unit sphere of the scene in COLMAP world coordinates: centre (3,), radius, and how it was found."""

    centre: np.ndarray
    radius: float
    points_used: int
    capped: bool  # the radius is the cameras' limit (the trimmed points reach further)

    @property
    def scale_mat(self) -> np.ndarray:
        """(4, 4) normalised -> world: [[r, 0, 0, cx], [0, r, 0, cy], [0, 0, r, cz], [0, 0, 0, 1]]."""
        mat = np.diag([self.radius] * 3 + [1.0])
        mat[:3, 3] = self.centre
        return mat


def normalisation(c2w: np.ndarray, points: np.ndarray, errors: np.ndarray, track_lengths: np.ndarray,
                  where: str = "sparse model") -> Normalisation:
    """The sphere around the object of interest, from the cameras (N, 4, 4) (camera-to-world, OpenCV) and the
    sparse points (P, 3) with their mean reprojection errors (P,) in pixels and track lengths (P,).

    - Centre: the point nearest to all optical axes (least squares, :func:`models.cameras.axes_meeting_point`),
      where photos taken around an object converge.
    - Limit: ``nearest camera distance to the centre / CAMERA_CLEARANCE``, so every camera stays well outside.
    - Points: those with reprojection error <= MAX_REPROJECTION_ERROR px seen in >= MIN_TRACK_LENGTH images,
      and within the limit (background and stray far points are trimmed).
    - Radius: the RADIUS_PERCENTILE-th percentile of their distances to the centre times RADIUS_MARGIN
      (robust to the few outliers left), at most the limit.

    Raises:
        InputError: the optical axes do not converge (not a capture around an object), or fewer than
            MIN_POINTS points are left.
    """
    centre_t = axes_meeting_point(torch.from_numpy(np.asarray(c2w, dtype=np.float64)))
    if centre_t is None:
        raise InputError(where, "the cameras' optical axes do not converge; take the photos around the object, facing it")
    centre = centre_t.numpy()
    limit = float(np.linalg.norm(c2w[:, :3, 3] - centre, axis=-1).min()) / CAMERA_CLEARANCE
    distances = np.linalg.norm(np.asarray(points, dtype=np.float64) - centre, axis=-1)
    kept = (np.asarray(errors) <= MAX_REPROJECTION_ERROR) & (np.asarray(track_lengths) >= MIN_TRACK_LENGTH) & (distances <= limit)
    if kept.sum() < MIN_POINTS:
        raise InputError(where, f"only {int(kept.sum())} reliable sparse points near the object (need {MIN_POINTS}); "
                                "photograph a textured object from more overlapping views")
    radius = RADIUS_MARGIN * float(np.percentile(distances[kept], RADIUS_PERCENTILE))
    return Normalisation(centre, min(radius, limit), int(kept.sum()), radius > limit)


def registered_or_raise(names: list[str], registered: set[str], where: str) -> list[str]:
    """The names (sorted) of ``names`` missing from ``registered``; raises InputError when fewer than
    max(MIN_IMAGES, MIN_REGISTERED_FRACTION of them) are registered."""
    count = sum(name in registered for name in names)
    needed = max(MIN_IMAGES, math.ceil(MIN_REGISTERED_FRACTION * len(names)))
    if count < needed:
        raise InputError(where, f"structure from motion registered {count} of {len(names)} images (need at least {needed}); "
                                "the photos need more overlap and texture (or try --matcher exhaustive, another --camera-model)")
    return sorted(name for name in names if name not in registered)


def check_decodes(path: Path) -> None:
    """Refuse (InputError) an image file that does not decode, e.g. random bytes named ``.jpg``."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(path, f"not a readable image ({type(err).__name__}: {' '.join(str(err).split())})") from err


def check_out_dir(out_dir: Path) -> None:
    """Refuse an existing ``out_dir`` that is not an empty folder (nothing of the user's is ever overwritten)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(out_dir, "output folder is not empty; choose a new one")


def run_sfm(image_dir: Path, names: list[str], work: Path, camera_model: str, matcher: str, max_size: int) -> tuple[str, object]:
    """COLMAP SfM of ``names`` in ``image_dir`` into ``work`` (database.db, sparse/K). Returns the folder
    (``sparse/K``) and pycolmap.Reconstruction of the model with the most registered images, or ("", None)."""
    import pycolmap

    database = work / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_size
    print(f"features: {len(names)} images", flush=True)
    pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=extraction)
    print(f"matching: {matcher}", flush=True)
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(database)
    else:
        pycolmap.match_sequential(database)
    print("mapping", flush=True)
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = 0
    (work / "sparse").mkdir()
    models = pycolmap.incremental_mapping(database, image_dir, work / "sparse", options=options)
    best = max(models, key=lambda k: models[k].num_reg_images(), default=None)
    return ("", None) if best is None else (f"sparse/{best}", models[best])


def bundle_adjust_principal_point(reconstruction, folder: Path) -> None:
    """A last global bundle adjustment of a pycolmap.Reconstruction that also refines the principal point,
    which COLMAP keeps at the image centre; the result is written to ``folder``. It helps cameras whose
    principal point is off-centre, seen from a wide range of angles (DTU scan24: the mean rotation error
    against the reference cameras drops from 0.32 to 0.09 degrees); on narrow rigs with a centred principal
    point it can drift."""
    import pycolmap

    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = True
    options.print_summary = False
    level = pycolmap.logging.minloglevel
    pycolmap.bundle_adjustment(reconstruction, options)  # it logs its heading and resets the log level
    pycolmap.logging.minloglevel = level
    reconstruction.update_point_3d_errors()
    folder.mkdir(parents=True, exist_ok=True)
    reconstruction.write(folder)


def _png(array: np.ndarray) -> bytes:
    """(H, W[, 3]) uint8 as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _uint8(path: Path, channels: slice) -> np.ndarray:
    """An image file's RGBA ``channels`` as (H, W, C) uint8 (read like the scene loader reads it)."""
    return np.round(read_image(path)[..., channels] * 255.0).astype(np.uint8)


def mask_path(mask_dir: Path, name: str) -> Path:
    """The mask of image ``name``: ``mask_dir/name``, ``mask_dir/<stem>.png`` or ``mask_dir/name.png`` (COLMAP's)."""
    for candidate in (mask_dir / name, (mask_dir / name).with_suffix(".png"), mask_dir / f"{name}.png"):
        if candidate.is_file():
            return candidate
    raise InputError(mask_dir, f"no mask for image {name} (expected {name}, {Path(name).stem}.png or {name}.png)")


def write_views(reconstruction, image_dir: Path, names: list[str], mask_dir: Path | None, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write ``out/image/NNN.png`` (and ``out/mask/NNN.png``) of the registered ``names`` in order,
    undistorted to a pinhole camera when theirs has distortion.

    Returns:
        intrinsics (N, 3, 3) of the written images; c2w (N, 4, 4) in COLMAP world coordinates (OpenCV convention).
    """
    import pycolmap

    by_name = {image.name: image for image in reconstruction.images.values()}
    undistort = pycolmap.UndistortCameraOptions()
    intrinsics, c2w, size = [], [], None
    for i, name in enumerate(names):
        image = by_name[name]
        camera = image.camera
        frames = [_uint8(image_dir / name, slice(0, 3))]
        if mask_dir is not None:
            frames.append(_uint8(mask_path(mask_dir, name), slice(0, 1))[..., 0])
        if frames[0].shape[:2] != (camera.height, camera.width):
            raise InputError(image_dir / name, f"image is {frames[0].shape[1]}x{frames[0].shape[0]} but its COLMAP camera "
                                               f"is {camera.width}x{camera.height}")
        if frames[-1].shape[:2] != frames[0].shape[:2]:
            raise InputError(mask_path(mask_dir, name), f"mask is {frames[-1].shape[1]}x{frames[-1].shape[0]} but its image "
                                                        f"is {frames[0].shape[1]}x{frames[0].shape[0]}")
        if camera.model_name not in ("SIMPLE_PINHOLE", "PINHOLE"):
            undistorted = [pycolmap.undistort_image(undistort, pycolmap.Bitmap.from_array(f), camera) for f in frames]
            frames = [bitmap.to_array() for bitmap, _ in undistorted]
            camera = undistorted[0][1]
        if size is not None and frames[0].shape != size:
            raise InputError(image_dir / name, f"undistorted to {frames[0].shape[1]}x{frames[0].shape[0]} while "
                                               f"{names[0]} is {size[1]}x{size[0]}; the images need one camera")
        size = frames[0].shape
        atomic_write(out / "image" / f"{i:03d}.png", _png(frames[0]))
        if mask_dir is not None:
            atomic_write(out / "mask" / f"{i:03d}.png", _png(np.where(frames[1].reshape(size[:2]) >= 128, 255, 0).astype(np.uint8)))
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        intrinsics.append(camera.calibration_matrix())
        c2w.append(np.linalg.inv(w2c))
    return np.stack(intrinsics), np.stack(c2w)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of an (H, W, 3) uint8 image's luma (Pech-Pacheco et al., "Diatom autofocusing
    in brightfield microscopy: a comparative study", ICPR 2000): high for a sharp frame, low for a blurred one."""
    g = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(laplacian.var())


def ffmpeg_reason(err: Exception) -> str:
    """The last line of ffmpeg's report in ``err`` (its banner and configuration come first), e.g.
    ``Error opening input files: Invalid data found when processing input``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def extract_frames(video: Path, folder: Path, count: int = DEFAULT_FRAMES, max_size: int | None = None) -> dict:
    """Write sharp, evenly spaced frames of ``video`` to ``folder/frame_NNNNNN.png`` (NNNNNN: the frame's index in
    the clip): the clip's N frames are cut into ``min(count, N)`` even segments (frame i in segment
    ``i * count // N``) and the :func:`sharpness` maximum of each is kept. ``max_size`` scales frames down so that
    their longer side is at most that many pixels. Returns the clip's frame count, the kept indices and their sharpness.

    Raises:
        InputError: the file is missing, not a video ffmpeg can read, or holds no frames.
    """
    import imageio_ffmpeg

    if not video.is_file():
        raise InputError(video, "video file not found")
    try:
        total = imageio_ffmpeg.count_frames_and_secs(str(video))[0]
        reader = imageio_ffmpeg.read_frames(str(video))
        width, height = next(reader)["size"]
    except (RuntimeError, OSError, KeyError, StopIteration) as err:
        raise InputError(video, f"not a readable video ({ffmpeg_reason(err)})") from err
    if total == 0:
        reader.close()
        raise InputError(video, "the video holds no frames")
    count = min(count, total)
    scale = 1.0 if max_size is None else min(1.0, max_size / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    best: dict[int, tuple[float, int, np.ndarray]] = {}  # segment -> (sharpness, index, frame)
    try:
        for index, data in enumerate(tqdm(reader, total=total, desc=f"frames of {video.name}", unit="frame")):
            frame = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
            if size != (width, height):
                frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BOX))
            segment, score = min(index * count // total, count - 1), sharpness(frame)
            if segment not in best or score > best[segment][0]:
                best[segment] = (score, index, frame)
    except (RuntimeError, OSError, ValueError) as err:
        raise InputError(video, f"not a readable video ({ffmpeg_reason(err)})") from err
    finally:
        reader.close()
    for _, index, frame in best.values():
        atomic_write(folder / f"frame_{index:06d}.png", _png(frame))
    kept = [best[k] for k in sorted(best)]
    return {"video": str(video), "video_frames": total, "frame_indices": [i for _, i, _ in kept],
            "frame_sharpness": [round(score, 2) for score, _, _ in kept]}


def build_scene(image_dir: Path, out_dir: Path, camera_model: str = "SIMPLE_RADIAL", matcher: str = "exhaustive",
                mask_dir: Path | None = None, max_size: int = 3200, sparse: Path | None = None,
                refine_principal_point: bool = False, extra: dict | None = None) -> dict:
    """Run the whole conversion (see the module docstring); returns what ``colmap_images.json`` holds (with
    ``extra``'s entries)."""
    import pycolmap

    if not image_dir.is_dir():
        raise InputError(image_dir, "image folder does not exist")
    if mask_dir is not None and not mask_dir.is_dir():
        raise InputError(mask_dir, "mask folder does not exist")
    names = [path.name for path in list_images(image_dir)]
    for name in names:
        check_decodes(image_dir / name)
    if len(names) < MIN_IMAGES:
        raise InputError(image_dir, f"{len(names)} images; structure from motion needs at least {MIN_IMAGES}")
    check_out_dir(out_dir)
    with atomic_folder(out_dir) as work:  # an empty out_dir (checked above) is replaced by the finished scene
        if sparse is None:
            (work / "colmap").mkdir()
            model, reconstruction = run_sfm(image_dir, names, work / "colmap", camera_model, matcher, max_size)
            source, model = image_dir, f"colmap/{model}"
        else:
            if not (sparse / "images.bin").is_file() and not (sparse / "images.txt").is_file():
                raise InputError(sparse, "not a COLMAP model (no images.bin or images.txt)")
            reconstruction, source, model = pycolmap.Reconstruction(sparse), sparse, str(sparse.resolve())
        registered = set() if reconstruction is None else {im.name for im in reconstruction.images.values() if im.has_pose}
        unregistered = registered_or_raise(names, registered, str(source))
        if unregistered:
            print(f"warning: {len(unregistered)} of {len(names)} images not registered, left out: {', '.join(unregistered)}",
                  file=sys.stderr)
        if refine_principal_point:
            model = model if sparse is None else "colmap/sparse/0"  # a given model is refined in a copy
            bundle_adjust_principal_point(reconstruction, work / model)
        views = [name for name in names if name in registered]
        intrinsics, c2w = write_views(reconstruction, image_dir, views, mask_dir, work)
        points = list(reconstruction.points3D.values())
        norm = normalisation(c2w, np.array([p.xyz for p in points]).reshape(-1, 3), np.array([p.error for p in points]),
                             np.array([p.track.length() for p in points]), str(source))
        normalised = c2w.copy()
        normalised[:, :3, 3] = (c2w[:, :3, 3] - norm.centre) / norm.radius
        save_cameras(work / "cameras_sphere.npz", intrinsics, normalised, norm.scale_mat)
        summary = {"images": views, "unregistered": unregistered, "centre": norm.centre.tolist(), "radius": norm.radius,
                   "radius_capped_by_cameras": norm.capped, "points_used": norm.points_used,
                   "sparse": model, **(extra or {})}
        atomic_write(work / "colmap_images.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def scene_from_video(video: Path, out_dir: Path, frames: int = DEFAULT_FRAMES, frame_size: int | None = None,
                     **options) -> dict:
    """:func:`extract_frames` of ``video``, then :func:`build_scene` of them (``options``: its keyword arguments)
    into ``out_dir``, which keeps the frames in ``frames/``; nothing is left behind when either fails."""
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.frames.tmp", dir=out_dir.parent))
    try:
        picked = extract_frames(video, folder, frames, frame_size)
        print(f"frames: the sharpest of each of {len(picked['frame_indices'])} even segments of {picked['video_frames']}",
              flush=True)
        summary = build_scene(folder, out_dir, extra=picked, **options)
        folder.rename(out_dir / "frames")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.colmap_scene", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, nargs="?", help="folder of photos of one object, taken around it (or --video)")
    parser.add_argument("out", type=Path, help="new (or empty) folder for the NeuS-layout scene")
    parser.add_argument("--video", type=Path, metavar="FILE", help="a clip filmed around the object instead of photos: "
                        "its sharpest frame in each of --frames even segments, matched sequentially")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, metavar="K", help=f"--video: how many frames to keep ({DEFAULT_FRAMES})")
    parser.add_argument("--frame-size", type=int, metavar="N", help="--video: longest side of the kept frames in pixels "
                        "(default: the video's)")
    parser.add_argument("--camera-model", choices=CAMERA_MODELS, default="SIMPLE_RADIAL", help="COLMAP camera model (one camera for all photos)")
    parser.add_argument("--matcher", choices=MATCHERS, help="exhaustive (default for photos) or sequential (default for "
                        "--video: for photos in capture order)")
    parser.add_argument("--masks", type=Path, metavar="DIR", help="object masks, named like the images (or <stem>.png); copied to mask/, not used by SfM")
    parser.add_argument("--max-size", type=int, default=3200, metavar="N", help="longest image side for feature extraction (pixels)")
    parser.add_argument("--sparse", type=Path, metavar="DIR", help="an existing COLMAP model of these images (e.g. sparse/0): skip SfM")
    parser.add_argument("--refine-principal-point", action="store_true",
                        help="refine the principal point (COLMAP keeps it at the image centre) in a last bundle adjustment")
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's log")
    args = parser.parse_args(argv)
    if (args.images is None) == (args.video is None):
        parser.error("give either IMAGES_DIR or --video FILE")
    if args.video is not None and (args.masks or args.sparse):
        parser.error("--masks and --sparse name photos; a --video scene takes neither")
    if args.frames < MIN_IMAGES or (args.frame_size is not None and args.frame_size < 16):
        parser.error(f"--frames must be at least {MIN_IMAGES} and --frame-size at least 16")
    matcher = args.matcher or ("sequential" if args.video is not None else "exhaustive")
    try:
        import pycolmap
    except ImportError:
        print("error: pycolmap is not installed; pip install -r requirements.txt", file=sys.stderr)
        return 2
    pycolmap.logging.minloglevel = 0 if args.verbose else 2  # INFO, or errors only
    try:
        if args.video is not None:
            summary = scene_from_video(args.video, args.out, args.frames, args.frame_size, camera_model=args.camera_model,
                                       matcher=matcher, max_size=args.max_size, refine_principal_point=args.refine_principal_point)
        else:
            summary = build_scene(args.images, args.out, args.camera_model, matcher, args.masks, args.max_size, args.sparse,
                                  args.refine_principal_point)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    capped = ", limited by the cameras' distance" if summary["radius_capped_by_cameras"] else ""
    print(f"{len(summary['images'])} views -> {args.out} (unit sphere: radius {summary['radius']:.4g}{capped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
