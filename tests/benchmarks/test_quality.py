"""The quality benchmark's jobs: each composes into a valid config, and each trainable-camera job of
issue 5 has a fixed-camera partner of the same system and length."""
import pytest

from benchmarks.quality import JOBS, job_overrides
from datasets.synthetic import SHAPES
from launch import compose_config
PAIRS = [("synthetic", "synthetic-cameras"), ("synthetic-3000", "synthetic-cameras-3000"),
         ("synthetic-idr-3580", "synthetic-idr-cameras-3580"), ("synthetic-6000", "synthetic-cameras-6000")]


def config(job: str):
    return compose_config(job_overrides(job))


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_composes(job):
    cfg = config(job)
    assert cfg.system.name in ("neus", "idr", "volsdf")
    assert (cfg.trainer.max_steps or cfg.trainer.schedule_steps) > 0  # steps, or a budget stretching schedule_steps


@pytest.mark.parametrize("fixed, trainable", PAIRS)
def test_trainable_camera_jobs_match_their_fixed_partner(fixed, trainable):
    a, b = config(fixed), config(trainable)
    assert a.camera._target_.endswith("FixedCameras") and b.camera._target_.endswith("TrainableCameras")
    assert (b.camera.noise.rotation_deg, b.camera.noise.translation) == (3, 0.02)
    assert a.system.name == b.system.name and a.trainer.max_steps == b.trainer.max_steps
    assert a.trainer.max_time == b.trainer.max_time
    assert a.dataset == b.dataset and a.system.model.geometry.hidden_dim == b.system.model.geometry.hidden_dim


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_jobs_run_on_every_shape(shape):
    cfg = config(f"encoder-nffb@{shape}")
    assert cfg.dataset.shape == shape and cfg.encoder._target_.endswith("NFFBEncoder")
    assert cfg.trainer.max_time == "00:00:08:00"


def test_shapes_run_shape_by_shape_and_parallel_jobs_share_the_threads(tmp_path, monkeypatch, capsys):
    """--parallel 2 runs the jobs of one shape side by side (shape by shape), each on half the CPU threads."""
    import benchmarks.quality as quality

    argv = ["quality.py", "--jobs", "synthetic", "synthetic-volsdf", "--shapes", "bowl", "handle", "--parallel", "2",
            "--no-append", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", [*argv, "--dry-run"])
    quality.main()
    assert capsys.readouterr().out.splitlines() == [
        "python launch.py dataset.shape=bowl", "python launch.py system=volsdf dataset.shape=bowl",
        "python launch.py dataset.shape=handle", "python launch.py system=volsdf dataset.shape=handle"]
    calls = []
    monkeypatch.setattr(quality, "launch", lambda overrides, run_dir, threads=None: calls.append(threads) or
                        {"step": 1, "wall_s": 0.0, "command": " ".join(overrides)})
    monkeypatch.setattr(quality.os, "cpu_count", lambda: 4)
    monkeypatch.setattr("sys.argv", argv)
    quality.main()
    assert calls == [2, 2, 2, 2]
