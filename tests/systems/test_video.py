"""Videos: the path through the training cameras, and MP4s of the frame count and size asked for."""
from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from core.errors import InputError
from core.geometry import look_at
from models.cameras import rotation_angle_deg
from systems.assembly import build_system, compose_config
from systems.config import Video
from systems.video import camera_path, render_videos


def ring(azimuths_deg: list[float], radius: float = 3.0, height: float = 0.8) -> torch.Tensor:
    """Cameras (N, 4, 4) at the given azimuths about z, looking at the origin."""
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return torch.stack([look_at(torch.tensor([radius * math.cos(math.radians(a)), radius * math.sin(math.radians(a)), height],
                                             dtype=torch.float64), up) for a in azimuths_deg])


def test_camera_path_runs_through_the_cameras_in_azimuth_order():
    # An arc of cameras given out of order; the largest gap (200 degrees) is between 140 and 0.
    cameras = ring([100.0, 0.0, 140.0, 50.0])
    path = camera_path(cameras, 3 * 3 + 1)
    # Every third frame is a camera, from one end of the arc to the other.
    for frame, camera in zip(path[::3], cameras[[1, 3, 0, 2]]):
        torch.testing.assert_close(frame, camera, atol=1e-6, rtol=0)
    # In between, poses stay proper rotations, on the cameras' circle, and turn a third of each step.
    rotations = path[:, :3, :3]
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(10, 3, 3), atol=1e-9, rtol=0)
    assert torch.allclose(path[:, :3, 3].norm(dim=-1), cameras[0, :3, 3].norm(), atol=1e-9)
    steps = rotation_angle_deg(rotations[1:], rotations[:-1])
    segment = rotation_angle_deg(cameras[[1, 3, 0]][:, :3, :3], cameras[[3, 0, 2]][:, :3, :3])
    torch.testing.assert_close(steps, segment.repeat_interleave(3) / 3, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def untrained(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = compose_config(["dataset=dtu", f"dataset.root={small_synthetic}", "dataset.test_views=[5]", "system.model.grid.resolution=32",
                          "encoder.compile=false"])
    return build_system(cfg, tmp_path_factory.mktemp("run")).eval()


def test_videos_have_the_frame_count_and_size_asked(untrained, tmp_path, capsys):
    written = render_videos(untrained, tmp_path, Video(frames=2, fps=5, size=16, path="both"))
    assert capsys.readouterr().err.count("video frames 16x12: 100%") >= 2  # a progress bar per path
    assert [p.name for p in written] == ["turntable_rgb.mp4", "turntable_normal.mp4", "cameras_rgb.mp4", "cameras_normal.mp4"]
    for path in written:
        frames = iio.imread(path, index=None)
        assert frames.shape == (2, 12, 16, 3), path.name  # the 64 x 48 views at a longer side of 16
    normals = iio.imread(tmp_path / "turntable_normal.mp4", index=None)
    assert normals.std() > 5  # the object shows
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporary files


@pytest.mark.parametrize(("key", "kwargs"), [("video.path", {"path": "spiral"}), ("video.frames", {"frames": 0}),
                                             ("video.size", {"size": 1})])
def test_bad_video_settings_are_refused(untrained, tmp_path, key, kwargs):
    with pytest.raises(InputError, match=key):
        render_videos(untrained, tmp_path, Video(**kwargs))
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_rendering_frees_each_chunk_before_the_next(untrained, monkeypatch):
    """Only the four per-ray outputs of a chunk survive it: its samples and autograd graph (from the SDF normals)
    are freed before the next chunk, so peak memory is one chunk's, whatever the image size."""
    import weakref

    render_rays = untrained.render_rays
    alive_at_each_call, returned = [], []

    def spy(rays, background):
        out = render_rays(rays, background)
        out["samples"] = torch.zeros(len(rays.origins), 64)  # stands for the per-sample tensors of a real chunk
        alive_at_each_call.append(sum(ref() is not None for ref in returned))
        returned.append(weakref.ref(out["samples"]))
        return out

    monkeypatch.setattr(untrained, "render_rays", spy)
    monkeypatch.setattr(untrained, "render_chunk", 256)
    k = untrained.scene.intrinsics[0]
    out = untrained.render_image(k, untrained.scene.c2w[0], 48, 64)  # 12 chunks
    assert len(alive_at_each_call) == 12 and max(alive_at_each_call) == 0
    assert out["rgb"].shape == (48, 64, 3) and not out["normal"].requires_grad
