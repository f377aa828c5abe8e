import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import InputError
from core.geometry import look_at
from datasets import synthetic
from datasets.npz import load_npz_scene
from models.cameras import align_poses, rotation_angle_deg
from tools.colmap_scene import CAMERA_CLEARANCE, extract_frames, main, normalisation, registered_or_raise, sharpness

pytest.importorskip("pycolmap")

# A rig SIFT can match: two rings of 12 views (15 and 45 degrees up, 2.2 units from the object), 480x360.
WIDTH, HEIGHT, DISTANCE, RING, ELEVATIONS = 480, 360, 2.2, 12, (15.0, 45.0)
SHAPE = "box_ellipsoid"
NOISE_CELL = 0.02  # finest cell of the speckle texture (about 5 pixels)


def _look_at(centre: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-world at ``centre`` (3,) looking at the origin, world z up."""
    return look_at(torch.from_numpy(centre), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).numpy()


def _value_noise(points: torch.Tensor, seed: int) -> torch.Tensor:
    """Smooth 3D value noise (P, 3) -> (P,) in [0, 1] on a unit lattice (a permutation-table hash)."""
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(seed))
    base = torch.floor(points)
    frac = points - base
    frac = frac * frac * (3 - 2 * frac)
    out = torch.zeros(len(points))
    for corner in torch.cartesian_prod(*[torch.tensor([0, 1])] * 3):
        cell = base.long() + corner
        value = perm[(perm[(perm[cell[:, 0] % 256] + cell[:, 1]) % 256] + cell[:, 2]) % 256].float() / 255
        out += value * torch.where(corner.bool(), frac, 1 - frac).prod(-1)
    return out


def _speckle(points: torch.Tensor) -> torch.Tensor:
    """Three octaves of contrasty grey noise, lightly tinted, (P, 3) -> (P, 3): blobs at every scale for SIFT
    (the generator's own textures are too smooth to register views)."""
    grey = sum(_value_noise(points / (NOISE_CELL * 2**o), o) * 0.5**o for o in range(3)) / 1.75
    grey = ((grey - 0.5) * 2.5 + 0.5).clamp(0, 1)
    tint = torch.stack([_value_noise(points / (4 * NOISE_CELL), 10 + c) for c in range(3)], -1)
    return (0.1 + 0.9 * grey)[:, None] * (0.7 + 0.3 * tint)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """24 photos (image/, mask/) of the speckled box_ellipsoid rendered by the generator, and their true c2w (24, 4, 4)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "image").mkdir()
    (root / "mask").mkdir()
    focal = 0.5 * HEIGHT * DISTANCE / 0.75  # the object (radius < 0.75) fills the height
    K = np.array([[focal, 0.0, WIDTH / 2], [0.0, focal, HEIGHT / 2], [0.0, 0.0, 1.0]])
    c2w = []
    for ring, elevation in enumerate(map(math.radians, ELEVATIONS)):
        for j in range(RING):
            azimuth = 2 * math.pi * (j + 0.5 * ring) / RING
            c2w.append(_look_at(DISTANCE * np.array(
                [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the generator's setting: many small kernels
    try:
        for i, pose in enumerate(c2w):
            colour, coverage = synthetic._render(K, pose, WIDTH, HEIGHT, synthetic.SHAPES[SHAPE][0], _speckle)
            Image.fromarray(np.round(colour * 255).astype(np.uint8)).save(root / "image" / f"view{i:02d}.png")
            Image.fromarray(np.where(coverage > 0.5, 255, 0).astype(np.uint8)).save(root / "mask" / f"view{i:02d}.png")
    finally:
        torch.set_num_threads(threads)
    return root, torch.from_numpy(np.stack(c2w))


@pytest.fixture(scope="module")
def converted(photos: tuple[Path, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photos through the tool (SfM, SIMPLE_RADIAL undistortion, masks carried along)."""
    root, _ = photos
    out = tmp_path_factory.mktemp("converted") / "scene"
    assert main([str(root / "image"), str(out), "--masks", str(root / "mask")]) == 0
    return out


@pytest.mark.slow
def test_recovered_cameras_match_the_true_ones_and_the_object_fits_the_unit_sphere(photos, converted) -> None:
    root, true_c2w = photos
    summary = json.loads((converted / "colmap_images.json").read_text())
    assert summary["images"] == [f"view{i:02d}.png" for i in range(24)] and summary["unregistered"] == []
    scene = load_npz_scene(str(converted))
    est = scene.c2w.double()
    sim = align_poses(est, true_c2w)
    aligned = sim.poses(est)
    rotation = rotation_angle_deg(aligned[:, :3, :3], true_c2w[:, :3, :3])
    centre = (aligned[:, :3, 3] - true_c2w[:, :3, 3]).norm(dim=-1)
    assert rotation.max() < 0.5, rotation
    assert centre.max() < 0.02 * DISTANCE, centre  # true units; the object's radius is 0.65
    # The object's surface, mapped into the normalised frame, fills the unit sphere without leaving it.
    axis = torch.linspace(-0.8, 0.8, 97, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis, axis)
    surface = grid[synthetic.scene_sdf(grid.float(), SHAPE).abs() < 0.5 * float(axis[1] - axis[0])]
    radii = sim.inverse().points(surface).norm(dim=-1)
    assert 0.6 < radii.max() < 1.0, radii.max()
    # Masks went through the same undistortion as the images: the non-black pixels are the mask.
    assert scene.masks is not None and scene.masks.shape == scene.images.shape[:3]
    lit, inside = scene.images.amax(-1) > 0.01, scene.masks > 0.5
    assert (lit & inside).sum() / (lit | inside).sum() > 0.97


@pytest.mark.slow
def test_an_existing_sparse_model_gives_the_same_scene_or_a_refined_one(photos, converted, tmp_path: Path) -> None:
    root, true_c2w = photos
    sparse = converted / json.loads((converted / "colmap_images.json").read_text())["sparse"]
    assert main([str(root / "image"), str(tmp_path / "again"), "--sparse", str(sparse)]) == 0
    assert not (tmp_path / "again" / "colmap").exists()  # no SfM
    first, again = np.load(converted / "cameras_sphere.npz"), np.load(tmp_path / "again" / "cameras_sphere.npz")
    assert sorted(first.files) == sorted(again.files)
    for key in first.files:
        np.testing.assert_allclose(again[key], first[key], rtol=1e-9, atol=1e-9)
    # The principal point refined in a copy of the model: it moves off the centre, the poses stay close.
    assert main([str(root / "image"), str(tmp_path / "refined"), "--sparse", str(sparse), "--refine-principal-point"]) == 0
    assert (tmp_path / "refined" / "colmap" / "sparse" / "0" / "cameras.bin").is_file()
    plain, refined = load_npz_scene(str(tmp_path / "again")), load_npz_scene(str(tmp_path / "refined"))
    assert (refined.intrinsics[0, :2, 2] - plain.intrinsics[0, :2, 2]).abs().max() > 0.1
    aligned = align_poses(refined.c2w.double(), true_c2w).poses(refined.c2w.double())
    assert rotation_angle_deg(aligned[:, :3, :3], true_c2w[:, :3, :3]).max() < 1.0


def _ring(centre: np.ndarray, distance: float, n: int = 16) -> np.ndarray:
    """(n, 4, 4) cameras on a tilted ring around ``centre`` looking at it."""
    out = []
    for i in range(n):
        a, e = 2 * math.pi * i / n, math.radians(20.0 + 15.0 * (i % 2))
        pose = _look_at(distance * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)]))
        pose[:3, 3] += centre
        out.append(pose)
    return np.stack(out)


def test_normalisation_centres_on_the_look_at_point_and_trims_outliers() -> None:
    gen = np.random.default_rng(0)
    centre = np.array([5.0, -2.0, 3.0])
    directions = gen.normal(size=(600, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    obj = centre + directions[:500] * gen.uniform(0.0, 1.0, (500, 1)) ** (1 / 3)  # the object: a unit ball
    stray = centre + directions[500:505] * 3.0  # 1 % of spurious points inside the cameras' limit
    far = centre + directions[505:] * 40.0  # background beyond the cameras
    points = np.concatenate([obj, stray, far])
    errors, tracks = np.full(len(points), 0.5), np.full(len(points), 4)
    bad = np.concatenate([centre + directions[:30] * 4.5, centre + directions[30:60] * 4.0])  # unreliable points
    points = np.concatenate([points, bad])
    errors = np.concatenate([errors, np.full(30, 3.0), np.full(30, 0.5)])
    tracks = np.concatenate([tracks, np.full(30, 5), np.full(30, 2)])
    norm = normalisation(_ring(centre, 10.0), points, errors, tracks)
    np.testing.assert_allclose(norm.centre, centre, atol=1e-9)
    assert 1.0 < norm.radius < 1.25 and not norm.capped and norm.points_used == 505
    np.testing.assert_allclose(norm.scale_mat, [[norm.radius, 0, 0, 5], [0, norm.radius, 0, -2], [0, 0, norm.radius, 3], [0, 0, 0, 1]])


def test_normalisation_keeps_the_cameras_outside_and_refuses_parallel_axes() -> None:
    gen = np.random.default_rng(1)
    scene = gen.uniform(-8.0, 8.0, (400, 3))  # a room of points: the radius is the cameras' limit
    norm = normalisation(_ring(np.zeros(3), 10.0), scene, np.zeros(400), np.full(400, 3))
    assert norm.capped and norm.radius == pytest.approx(10.0 / CAMERA_CLEARANCE)
    forward = np.repeat(np.eye(4)[None], 5, axis=0)
    forward[:, 0, 3] = np.arange(5.0)  # a row of cameras all facing +z
    with pytest.raises(InputError, match="optical axes do not converge"):
        normalisation(forward, scene, np.zeros(400), np.full(400, 3))
    with pytest.raises(InputError, match="only 0 reliable sparse points"):
        normalisation(_ring(np.zeros(3), 10.0), scene, np.full(400, 5.0), np.full(400, 3))


def test_too_few_registered_images_is_a_one_line_error() -> None:
    names = [f"{i:02d}.jpg" for i in range(12)]
    with pytest.raises(InputError, match=r"^photos: structure from motion registered 5 of 12 images \(need at least 6\)"):
        registered_or_raise(names, set(names[:5]), "photos")
    assert registered_or_raise(names, set(names[:9]) | {"other.jpg"}, "photos") == names[9:]
    with pytest.raises(InputError, match="registered 2 of 4 images \\(need at least 3\\)"):
        registered_or_raise(names[:4], set(names[:2]), "photos")


def test_command_refuses_too_few_photos_and_a_non_empty_output(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.new("RGB", (32, 24)).save(tmp_path / "photos" / f"{i}.png")
    assert main([str(tmp_path / "photos"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'photos'}: 2 images; structure from motion needs at least 3\n"
    Image.new("RGB", (32, 24)).save(tmp_path / "photos" / "2.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main([str(tmp_path / "photos"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'out'}: output folder is not empty; choose a new one\n"
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".out.tmp*"))


def test_a_file_that_does_not_decode_is_not_counted_as_an_image(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24)).save(tmp_path / "photos" / f"{i}.png")
    (tmp_path / "photos" / "3.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    assert main([str(tmp_path / "photos"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'photos' / '3.jpg'}: not a readable image") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# --- Video in: a clip of N_CLIP frames of moving speckle, blurred but for one frame in each of N_KEPT segments.
N_CLIP, N_KEPT = 40, 8
SHARP = [5 * k + (2 * k) % 5 for k in range(N_KEPT)]  # the one sharp frame of each 5-frame segment, at varying places


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H.264 MP4 (64x48) of a speckle texture sliding 1 px a frame; every frame but those of SHARP box-blurred."""
    import imageio_ffmpeg

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    texture = np.random.default_rng(0).integers(0, 256, (24, 32 + N_CLIP // 2, 3)).repeat(2, 0).repeat(2, 1).astype(np.float32)
    writer = imageio_ffmpeg.write_frames(str(path), (64, 48), fps=10, quality=10)
    writer.send(None)
    for i in range(N_CLIP):
        frame = texture[:, i:i + 64]
        if i not in SHARP:  # a 5x5 box blur
            padded = np.pad(frame, ((2, 2), (2, 2), (0, 0)), mode="edge")
            frame = sum(padded[dy:dy + 48, dx:dx + 64] for dy in range(5) for dx in range(5)) / 25
        writer.send(np.ascontiguousarray(np.round(frame).astype(np.uint8)))
    writer.close()
    return path


def test_video_frames_are_the_sharpest_of_even_segments(clip: Path, tmp_path: Path) -> None:
    picked = extract_frames(clip, tmp_path / "frames", N_KEPT)
    assert picked["video_frames"] == N_CLIP and picked["frame_indices"] == SHARP
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:06d}.png" for i in SHARP]
    # Fewer segments than frames asked of a short clip: every frame; --frame-size scales the longer side down.
    picked = extract_frames(clip, tmp_path / "small", 100, max_size=32)
    assert picked["frame_indices"] == list(range(N_CLIP))
    assert Image.open(tmp_path / "small" / "frame_000000.png").size == (32, 24)


def test_video_runs_the_sequential_matcher_on_the_chosen_frames(clip: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import pycolmap

    calls = []

    def extract(database, image_dir, image_names, **kwargs):
        calls.append(("extract_features", list(image_names)))
        calls.append(("sharpness", [sharpness(np.asarray(Image.open(Path(image_dir) / n))) for n in image_names]))

    monkeypatch.setattr(pycolmap, "extract_features", extract)
    monkeypatch.setattr(pycolmap, "match_sequential", lambda database: calls.append(("match_sequential",)))
    monkeypatch.setattr(pycolmap, "match_exhaustive", lambda database: calls.append(("match_exhaustive",)))
    monkeypatch.setattr(pycolmap, "incremental_mapping", lambda *args, **kwargs: {})  # SfM registers nothing
    assert main(["--video", str(clip), str(tmp_path / "scene"), "--frames", str(N_KEPT)]) == 2
    assert [c[0] for c in calls] == ["extract_features", "sharpness", "match_sequential"]
    assert calls[0][1] == [f"frame_{i:06d}.png" for i in SHARP]
    assert min(calls[1][1]) > 2 * max(sharpness(f) for f in _blurred_neighbours(clip))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "structure from motion registered 0 of 8 images" in err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no scene, no frames folder left behind
    # An explicit --matcher wins.
    calls.clear()
    assert main(["--video", str(clip), str(tmp_path / "scene"), "--frames", str(N_KEPT), "--matcher", "exhaustive"]) == 2
    assert [c[0] for c in calls] == ["extract_features", "sharpness", "match_exhaustive"]


def _blurred_neighbours(clip: Path) -> list[np.ndarray]:
    """The clip's frames just after each sharp one (all blurred), decoded."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(clip))
    next(reader)
    frames = [np.frombuffer(data, np.uint8).reshape(48, 64, 3) for data in reader]
    return [frames[i + 1] for i in SHARP if i + 1 < N_CLIP and i + 1 not in SHARP]


def test_a_video_scene_keeps_its_frames(clip: Path, tmp_path: Path, monkeypatch) -> None:
    import tools.colmap_scene as tool

    def build(image_dir: Path, out_dir: Path, extra: dict, **options) -> dict:  # SfM stood in for: the scene is a folder
        assert options["matcher"] == "sequential" and sorted(p.name for p in image_dir.iterdir())[0] == "frame_000000.png"
        out_dir.mkdir()
        return {**extra, "images": sorted(p.name for p in image_dir.iterdir()), "radius": 1.0, "radius_capped_by_cameras": False}

    monkeypatch.setattr(tool, "build_scene", build)
    assert main(["--video", str(clip), str(tmp_path / "scene"), "--frames", str(N_KEPT)]) == 0
    assert sorted(p.name for p in (tmp_path / "scene" / "frames").iterdir()) == [f"frame_{i:06d}.png" for i in SHARP]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # the temporary frames folder became scene/frames


@pytest.mark.parametrize("content, problem", [(None, "video file not found"),
                                              (b"not a video at all", "not a readable video (Error opening input files")])
def test_a_missing_or_bad_video_is_a_one_line_error(tmp_path: Path, capsys, content, problem) -> None:
    video = tmp_path / "clip.mp4"
    if content is not None:
        video.write_bytes(content)
    assert main(["--video", str(video), str(tmp_path / "scene")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {video}: {problem}") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["clip.mp4"])
