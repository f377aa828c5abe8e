"""Dynamic scenes frame by frame: warm start, the motion-only phase's parameters, schedules that continue
across frames, the per-frame table; and tiny end-to-end sequences through launch.py (outputs, recovered
motion, resume mid-sequence)."""
from __future__ import annotations

import csv
import json
import math
import signal

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from core.errors import InputError
from datasets.npz import load_npz_scene
from datasets.synthetic import generate_sequence
from launch import compose_config
import launch
from models.cameras import FixedCameras
from systems.callbacks import StepSchedules
from systems.sequence import moving_cameras, motion_errors, set_trainable, warm_start, write_table


def _system(scene, seed: int):
    cfg = compose_config(["encoder=hashgrid", "encoder.compile=false", "system.model.grid.resolution=16"])
    torch.manual_seed(seed)
    system = instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(
        scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))
    system.cameras = moving_cameras(system.cameras)
    return system


def test_warm_start_carries_the_weights_and_the_motion(small_synthetic) -> None:
    scene = load_npz_scene(str(small_synthetic))
    previous, current = _system(scene, 0), _system(scene, 1)
    with torch.no_grad():
        previous.cameras.motion.rotation.copy_(torch.tensor([0.0, 0.0, 0.1]))
        previous.cameras.motion.translation.copy_(torch.tensor([0.05, 0.0, 0.0]))
        previous.model.grid.occupied.zero_()
        current.cameras.cameras.c2w[:, 0, 3] += 1.0  # this frame's own cameras
    own_c2w = current.cameras.cameras.c2w.clone()
    assert not torch.equal(previous.model.geometry.encoder.table, current.model.geometry.encoder.table)
    warm_start(current, previous.state_dict())
    for name, value in previous.state_dict().items():
        if not name.startswith("cameras."):
            assert torch.equal(value, current.state_dict()[name]), name
    assert torch.equal(current.cameras.cameras.c2w, own_c2w)
    assert torch.allclose(current.cameras.motion.matrix(), previous.cameras.motion.matrix(), atol=1e-6)
    assert float(current.cameras.motion.rotation.abs().sum()) == 0.0 and float(current.cameras.motion.translation.abs().sum()) == 0.0


def test_motion_phase_optimises_the_motion_only(small_synthetic) -> None:
    system = _system(load_npz_scene(str(small_synthetic)), 0)
    set_trainable(system, motion_only=True)
    system.trainer = type("T", (), {"max_steps": 100})()  # configure_optimizers reads trainer.max_steps
    groups = system.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["motion"]
    assert sum(p.numel() for g in groups for p in g["params"]) == 6
    set_trainable(system, motion_only=False)
    names = [g["name"] for g in system.configure_optimizers()["optimizer"].param_groups]
    assert "motion" not in names and "encoder" in names and "geometry" in names


def test_schedules_continue_from_the_step_offset(small_synthetic) -> None:
    system = _system(load_npz_scene(str(small_synthetic)), 0)
    encoder = system.model.geometry.encoder
    trainer = type("T", (), {"global_step": 0, "current_epoch": 0})()
    system.trainer = trainer
    StepSchedules().on_train_batch_start(trainer, system, None, 0)
    coarse = int(encoder.n_active)
    system.step_offset = 100_000
    StepSchedules().on_train_batch_start(trainer, system, None, 0)
    assert coarse < encoder.n_levels and int(encoder.n_active) == encoder.n_levels
    assert system.anneal == 1.0


def test_motion_errors_and_table(tmp_path) -> None:
    first = np.eye(4)
    first[:3, 3] = [0.1, 0.0, 0.0]
    truth = np.eye(4)
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    truth[:2, :2] = [[c, -s], [s, c]]
    learned = torch.from_numpy(truth @ np.linalg.inv(first)).float()
    errors = motion_errors(learned, truth, first)
    assert errors["motion_rotation_error_deg"] < 1e-3 and errors["motion_translation_error"] < 1e-6
    assert motion_errors(torch.eye(4), truth, first)["motion_rotation_error_deg"] == pytest.approx(10.0, abs=1e-3)
    rows = [{"frame": 0, "steps": 10, "chamfer": 1.0, "psnr": 30.0}, {"frame": 1, "steps": 5, "motion_steps": 2, "chamfer": 2.0}]
    summary = write_table(tmp_path, rows)
    assert summary["chamfer_mean"] == 1.5 and summary["chamfer_max"] == 2.0 and summary["steps"] == 17
    table = list(csv.DictReader(open(tmp_path / "frames.csv")))
    assert [r["frame"] for r in table] == ["0", "1"] and table[1]["motion_steps"] == "2"
    assert json.loads((tmp_path / "metrics.json").read_text())["frames"] == rows


def test_a_sequence_refuses_single_scene_modes_and_trainable_cameras(tmp_path) -> None:
    root = generate_sequence(str(tmp_path / "sequence"), n_frames=2, n_views=4, width=32, height=24)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    base = ["dataset=sequence", f"dataset.root={root}", "dataset.test_every=2", "encoder.compile=false"]
    with pytest.raises(InputError, match="mode=export is for single scenes"):
        launch.run(compose_config([*base, "mode=export"]), run_dir)
    with pytest.raises(InputError, match="camera=fixed"):
        launch.run(compose_config([*base, "camera=trainable"]), run_dir)
    with pytest.raises(InputError, match="dataset.root.*required"):
        launch.run(compose_config(["dataset=sequence"]), run_dir)
    assert not any(run_dir.iterdir())  # refused before anything was written


def test_a_sequence_stopped_in_a_test_phase_names_the_run_to_resume(tmp_path, monkeypatch) -> None:
    """The resume line of a SIGTERM in a frame's test phase names the sequence's run directory, which resume= takes."""
    from systems.callbacks import TerminateTestOnSigterm
    import systems.sequence
    from systems.sequence import frame_dir, frame_trainer

    def first_trainer(cfg, sequence, run_dir):
        trainer = frame_trainer(cfg, run_dir, frame_dir(run_dir, 0), 1, [], False)
        return {"hint": next(c for c in trainer.callbacks if isinstance(c, TerminateTestOnSigterm)).run_dir}

    monkeypatch.setattr(systems.sequence, "train_sequence", first_trainer)
    root = generate_sequence(str(tmp_path / "sequence"), n_frames=1, n_views=4, width=32, height=24)
    run_dir = tmp_path / "run"
    assert launch.run(compose_config(["dataset=sequence", f"dataset.root={root}", "encoder.compile=false"]), run_dir)["hint"] == run_dir


# A two-frame sequence: the object turns by 8 degrees and moves by 0.1 (no twist), so frame 1 is frame 0 moved rigidly.
TINY_SEQUENCE = [
    "dataset=synthetic_sequence", "dataset.n_frames=2", "dataset.n_views=10", "dataset.width=64", "dataset.height=48",
    "dataset.test_every=5", "dataset.rotation_deg=8", "dataset.twist=0", "sequence.first_frame_steps=200",
    "sequence.next_frame_steps=30", "sequence.global_motion_steps=60", "export.resolution=48", "eval.chamfer_points=5000",
    "system.rays.target_samples=4096", "system.model.grid.resolution=32", "encoder.compile=false",
    "trainer.checkpoint_every_n_steps=10", "trainer.val_check_interval=100000", "trainer.log_every_n_steps=5",
]


@pytest.mark.slow
def test_sequence_trains_frame_by_frame_recovers_the_motion_and_resumes_mid_sequence(start_launch, terminate_when, launch, tmp_path) -> None:
    """Killed in frame 1's field phase, then resumed: frame 0 is kept as it was, frame 1 continues from its own
    checkpoint, and the run ends with per-frame meshes, metrics, table and video; the motion phase recovered
    most of the known rigid motion."""
    run_dir = tmp_path / "run"
    args = [*TINY_SEQUENCE, f"data_dir={tmp_path / 'data'}"]
    proc = start_launch(tmp_path / "stderr.txt", *args, f"hydra.run.dir={run_dir}")
    frame1 = run_dir / "frames" / "frame_0001" / "checkpoints"
    terminate_when(proc, lambda: bool(list(frame1.glob("step*.ckpt"))))
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert f"resume={run_dir}" in stderr.strip().splitlines()[-1]
    frame0 = run_dir / "frames" / "frame_0000" / "metrics.json"
    assert frame0.is_file() and not (run_dir / "frames" / "frame_0001" / "metrics.json").exists()
    assert [p.name for p in (run_dir / "frames" / "frame_0000" / "checkpoints").iterdir()] == ["last.ckpt"]  # slimmed
    written = frame0.stat().st_mtime_ns

    result = launch(f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "launch.log").read_text()
    assert "frame 0 of 2: done before" in log and f"frame 1 of 2: resuming from {frame1}" in log
    assert frame0.stat().st_mtime_ns == written
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = list(csv.DictReader(open(run_dir / "frames.csv")))
    assert metrics["n_frames"] == 2 and [r["frame"] for r in rows] == ["0", "1"] and metrics["steps"] == 200 + 30 + 60
    assert json.loads((run_dir / "frames" / "frame_0001" / "metrics.json").read_text())["step"] == 30
    for i, row in enumerate(rows):
        assert (run_dir / "meshes" / f"frame_{i:04d}.ply").is_file()
        assert float(row["chamfer"]) < 4.0 and float(row["iou"]) > 0.7, row
    assert (run_dir / "video" / "sequence.mp4").stat().st_size > 1000
    # The motion phase: 8 degrees and 0.1 units of motion to find, from the identity.
    assert float(rows[1]["motion_rotation_error_deg"]) < 4.0 and float(rows[1]["motion_translation_error"]) < 0.05, rows[1]
