"""The command line: overrides, run directory contract, resume, modes, bad input, multirun."""
from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
import yaml
from scipy.spatial import cKDTree
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.errors import InputError
from systems.run_dir import folder_state

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def finished_run(launch, tiny, data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "base"
    result = launch(*tiny, f"data_dir={data_dir}", f"hydra.run.dir={run_dir}", "seed=7", "name=tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir.parent / "base.stdout").write_text(result.stdout)  # beside the run, whose folder holds only its own files
    (run_dir.parent / "base.stderr").write_text(result.stderr)
    return run_dir


def step_of(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


def test_run_directory_contract_and_overrides(finished_run):
    config = (finished_run / ".hydra" / "config.yaml").read_text()
    assert "max_steps: 6" in config and "seed: 7" in config and "name: tiny" in config
    assert step_of(finished_run / "checkpoints" / "last.ckpt") == 6
    assert (finished_run / "checkpoints" / "step000003.ckpt").is_file()
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    assert (finished_run / "meshes" / "final.ply").stat().st_size > 0
    assert len(list((finished_run / "renders").glob("*_rgb.png"))) == 2
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["n_test_views"] == 2
    for key in ("psnr", "iou", "chamfer", "accuracy", "completeness"):
        assert isinstance(metrics[key], float)
    assert not list(finished_run.rglob("*.tmp"))
    assert "training ended at step 6: trainer.max_steps=6 reached" in (finished_run / "launch.log").read_text()


def test_a_run_prints_progress_and_no_library_noise(finished_run):
    stderr = (finished_run.parent / "base.stderr").read_text()
    for noise in ("Tip:", "LeafSpec", "weights_only", "will override existing callbacks"):
        assert noise not in stderr, noise
    # The visual hull is carved with a progress bar over the 6 training views, and timed apart from training.
    assert "visual hull: 100%" in stderr and "6/6" in stderr
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert 0 < metrics["hull_time_s"] and 0 < metrics["train_time_s"]
    assert f"visual hull  {metrics['hull_time_s']} s (before training)" in (finished_run.parent / "base.stdout").read_text()


def test_mesh_is_in_the_world_frame(finished_run, data_dir):
    import trimesh

    mesh = trimesh.load(finished_run / "meshes" / "final.ply", process=False)
    gt = trimesh.load(next(data_dir.glob("synthetic_*/gt_mesh.ply")), process=False)
    # Both in world millimetres: the prediction's centre lies near the GT's, far from the origin.
    assert abs(mesh.vertices.mean(0) - gt.vertices.mean(0)).max() < 0.3 * gt.extents.max()
    assert abs(gt.vertices.mean(0)).max() > 10


@pytest.mark.slow
def test_resume_continues_at_the_saved_step(launch, finished_run, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(finished_run, run_dir)
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # Same budget: a resumed run has nothing left to do, so the weights must not move.
    result = launch(f"resume={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert after["global_step"] == 6
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key]), key
    # A larger budget continues from step 6 to 9 with the saved overrides (tiny scene) re-applied.
    trained = json.loads((finished_run / "metrics.json").read_text())["train_time_s"]
    result = launch(f"resume={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=9")
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 9
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 9
    assert metrics["train_time_s"] > trained  # the first 6 steps' time is carried in the checkpoint
    assert "grid.occupied" in "".join(after["state_dict"])  # the occupancy grid travels with the checkpoint


@pytest.mark.slow
def test_export_and_test_modes_rewrite_results(launch, finished_run, tmp_path):
    run_dir = tmp_path / "again"
    shutil.copytree(finished_run, run_dir)
    mesh = run_dir / "meshes" / "final.ply"
    mesh.unlink()
    result = launch(f"resume={run_dir}", "mode=export")
    assert result.returncode == 0, result.stderr[-3000:]
    assert mesh.stat().st_size > 0
    (run_dir / "metrics.json").unlink()
    result = launch(f"resume={run_dir}", "mode=test")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and "chamfer" in metrics and "psnr" in metrics
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 6
    # Training's and mode=test's event files: both log the metrics and the mesh at the checkpoint's step 6.
    steps = {"test/psnr": [], "mesh_VERTEX": []}
    for events in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0, "scalars": 0})
        accumulator.Reload()
        steps["test/psnr"] += [e.step for e in accumulator.Scalars("test/psnr")] if "test/psnr" in accumulator.Tags()["scalars"] else []
        steps["mesh_VERTEX"] += [e.step for e in accumulator.Tensors("mesh_VERTEX")] if "mesh_VERTEX" in accumulator.Tags()["tensors"] else []
    assert steps == {"test/psnr": [6, 6], "mesh_VERTEX": [6, 6]}


@pytest.mark.slow
def test_point_cloud_export_in_export_and_test_modes(launch, finished_run, tmp_path):
    run_dir = tmp_path / "points"
    shutil.copytree(finished_run, run_dir)
    cloud = run_dir / "meshes" / "final_points.ply"
    result = launch(f"resume={run_dir}", "mode=export", "export.points=300")
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = trimesh.load(cloud, process=False)
    assert isinstance(loaded, trimesh.PointCloud) and loaded.vertices.shape == (300, 3)
    assert f"points       {cloud}" in result.stdout.splitlines()
    # The mesh (world frame) was rewritten beside it; the points lie on it.
    mesh = trimesh.load(run_dir / "meshes" / "final.ply", process=False)
    assert cKDTree(mesh.vertices).query(loaded.vertices)[0].max() < 0.05 * mesh.extents.max()
    # The test phase's export (training's final one) writes it too, and metrics.json names it.
    cloud.unlink()
    result = launch(f"resume={run_dir}", "mode=test", "export.points=200")
    assert result.returncode == 0, result.stderr[-3000:]
    assert trimesh.load(cloud, process=False).vertices.shape == (200, 3)
    assert json.loads((run_dir / "metrics.json").read_text())["points"] == str(cloud)


def test_the_mesh_is_logged_to_tensorboard(finished_run):
    logged = {}
    for events in (finished_run / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        logged.update({tag: accumulator.Tensors(tag)[-1] for tag in accumulator.Tags()["tensors"]})
    mesh = trimesh.load(finished_run / "meshes" / "final.ply", process=False)
    shapes = {tag: [d.size for d in logged[tag].tensor_proto.tensor_shape.dim] for tag in ("mesh_VERTEX", "mesh_FACE", "mesh_COLOR")}
    assert shapes == {"mesh_VERTEX": [1, len(mesh.vertices), 3], "mesh_FACE": [1, len(mesh.faces), 3], "mesh_COLOR": [1, len(mesh.vertices), 3]}
    assert logged["mesh_VERTEX"].step == 6


def test_held_out_renders_and_the_config_are_in_tensorboard(finished_run):
    images = {}
    for events in (finished_run / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        images.update({tag: accumulator.Images(tag)[-1] for tag in accumulator.Tags()["images"] if tag.startswith("test_")})
    assert sorted(images) == sorted(f"test_{key}/view{view:03d}" for key in ("rgb", "normal", "depth") for view in (0, 4))
    assert {(i.step, i.width, i.height) for i in images.values()} == {(6, 64, 48)}
    # hparams.yaml holds the flattened config; the final metrics go with it to the HParams tab.
    hparams = yaml.safe_load((finished_run / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["trainer.max_steps"] == 6 and hparams["name"] == "tiny" and hparams["system.name"] == "neus"


@pytest.mark.slow
def test_video_mode_writes_mp4s_of_the_frame_count_and_size_asked(launch, finished_run, tmp_path):
    run_dir = tmp_path / "video"
    shutil.copytree(finished_run, run_dir)
    result = launch(f"resume={run_dir}", "mode=video", "video.frames=5", "video.size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "video").iterdir()) == ["turntable_normal.mp4", "turntable_rgb.mp4"]
    for name in ("turntable_rgb.mp4", "turntable_normal.mp4"):
        assert iio.imread(run_dir / "video" / name, index=None).shape == (5, 24, 32, 3)  # 64 x 48 views, longer side 32
        assert str(run_dir / "video" / name) in result.stdout
    assert folder_state(run_dir) == "run"  # still a run of ours: it resumes


@pytest.mark.slow
def test_textured_decimated_export(launch, finished_run, tmp_path):
    run_dir = tmp_path / "textured"
    shutil.copytree(finished_run, run_dir)
    result = launch(f"resume={run_dir}", "mode=export", "export.texture=true", "export.target_faces=500", "export.texture_size=128")
    assert result.returncode == 0, result.stderr[-3000:]
    meshes = run_dir / "meshes"
    # The decimated mesh has a name of its own: the training's full mesh is kept.
    assert sorted(p.name for p in meshes.iterdir()) == ["final.ply", "final_500.ply", "final_500_textured.glb", "final_500_textured.mtl",
                                                        "final_500_textured.obj", "final_500_textured.png"]
    assert (meshes / "final.ply").read_bytes() == (finished_run / "meshes" / "final.ply").read_bytes()
    plain = trimesh.load(meshes / "final_500.ply", process=False)
    assert 400 <= len(plain.faces) <= 500
    # The summary lists every file written, one a line.
    listed = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith(("mesh ", "textured ", " "))]
    assert sorted(Path(p).name for p in listed) == sorted(p.name for p in meshes.iterdir() if p.name != "final.ply")
    for name in ("final_500_textured.obj", "final_500_textured.glb"):
        textured = trimesh.load(meshes / name, process=False, force="mesh")
        image = textured.visual.material.image if name.endswith(".obj") else textured.visual.material.baseColorTexture
        assert len(textured.faces) == len(plain.faces) and textured.visual.uv.shape == (len(textured.vertices), 2)
        assert image.size == (128, 128)
        # Same surface in the world frame; the texture at each vertex's uv is that vertex's colour in the ply.
        distance, nearest = cKDTree(plain.vertices).query(textured.vertices)
        assert distance.max() < 1e-4 * np.abs(plain.vertices).max()
        colours = trimesh.visual.color.uv_to_color(textured.visual.uv, image)[:, :3].astype(int)
        assert np.abs(colours - plain.visual.vertex_colors[nearest, :3].astype(int)).max() <= 2


@pytest.mark.slow
def test_sigterm_in_training_exits_non_zero_and_says_how_to_resume(start_launch, terminate_when, tiny, data_dir, tmp_path):
    """A killed run must not look finished to a sweep or a scheduler: exit 128 + SIGTERM, checkpoints kept."""
    run_dir = tmp_path / "killed_in_training"
    proc = start_launch(tmp_path / "stderr.txt", *tiny, f"data_dir={data_dir}", f"hydra.run.dir={run_dir}", "trainer.max_steps=100000")
    terminate_when(proc, lambda: bool(list((run_dir / "checkpoints").glob("step*.ckpt"))))
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert f"resume={run_dir}" in stderr.strip().splitlines()[-1]
    assert not (run_dir / "metrics.json").exists() and step_of(next((run_dir / "checkpoints").glob("step*.ckpt"))) >= 3


@pytest.mark.slow
def test_sigterm_in_the_test_phase_ends_the_run_at_once(start_launch, finished_run, tmp_path):
    """A plain kill during the Chamfer (minutes on real scenes) stops the process, and the run's
    files are intact."""
    run_dir = tmp_path / "killed"
    shutil.copytree(finished_run, run_dir)
    mesh, metrics = run_dir / "meshes" / "final.ply", (run_dir / "metrics.json").read_text()
    mesh.unlink()
    proc = start_launch(tmp_path / "stderr.txt", f"resume={run_dir}", "mode=test", "eval.chamfer_points=3000000")
    try:
        while proc.poll() is None and not mesh.exists():  # the mesh is written just before the Chamfer starts
            time.sleep(0.2)
        assert proc.poll() is None, "the test phase ended before the Chamfer could be interrupted"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    last = (tmp_path / "stderr.txt").read_text().strip().splitlines()[-1]
    assert last == f"stopped by SIGTERM; continue with: python launch.py resume={run_dir} mode=test"
    assert (run_dir / "metrics.json").read_text() == metrics and mesh.stat().st_size > 0
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 6


@pytest.mark.slow
def test_sigterm_in_export_mode_says_how_to_resume(start_launch, terminate_when, finished_run, tmp_path):
    run_dir = tmp_path / "exporting"
    shutil.copytree(finished_run, run_dir)
    log = run_dir / "launch.log"
    before = log.stat().st_size
    proc = start_launch(tmp_path / "stderr.txt", f"resume={run_dir}", "mode=export", "export.resolution=512")
    terminate_when(proc, lambda: "exporting the mesh" in log.read_text()[before:])
    last = (tmp_path / "stderr.txt").read_text().strip().splitlines()[-1]
    assert proc.returncode == 128 + signal.SIGTERM
    assert last == f"stopped by SIGTERM; continue with: python launch.py resume={run_dir} mode=export"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(["dataset=dtu", "dataset.root=/nonexistent/scan"], "/nonexistent/scan", marks=pytest.mark.slow),
        pytest.param(["encoder=nope"], "encoder/nope.yaml", marks=pytest.mark.slow),
        pytest.param(["system.background=purple"], "system.background", marks=pytest.mark.slow),
        pytest.param(["mode=bogus"], "mode", marks=pytest.mark.slow),
        (["mode=test"], "resume"),
        pytest.param(["dataset.test_views=[0,1,2,3,4,5,6,7]"], "dataset.test_views", marks=pytest.mark.slow),
        (["system.optim.lr_encoder=abc"], "system.optim.lr_encoder"),
        pytest.param(["encoder.backend=nope"], "system.model.geometry.encoder: unknown encoder backend", marks=pytest.mark.slow),
        pytest.param(["system.model.geometry.grad_type=nope"], "unknown grad_type", marks=pytest.mark.slow),
        pytest.param(["dataset=dtu", "scan=65"], "searched under data_dir=", marks=pytest.mark.slow),
        pytest.param(["dataset.shape=cube"], "dataset.shape", marks=pytest.mark.slow),
        pytest.param(["mode=transfer"], "geometry_run", marks=pytest.mark.slow),
        pytest.param(["export.resolution=0"], "export.resolution: must be at least 8, got 0", marks=pytest.mark.slow),
        pytest.param(["system.eval_downscale=0"], "system.eval_downscale: must be at least 1, got 0", marks=pytest.mark.slow),
        pytest.param(["system.rays.initial=-1"], "system.rays.initial", marks=pytest.mark.slow),
        pytest.param(["eval.chamfer_points=0"], "eval.chamfer_points", marks=pytest.mark.slow),
        pytest.param(["video.fps=0"], "video.fps", marks=pytest.mark.slow),
        pytest.param(["export.points=-1"], "export.points: must be at least 0, got -1", marks=pytest.mark.slow),
        (["+callbacks.x={_target_:os.system,command:ls}"], "because it allows config data to control executable behavior or"),
    ],
    ids=["missing-folder", "unknown-group-option", "unknown-background", "unknown-mode", "test-without-run", "all-held-out",
         "typed-section", "instantiate-error", "constructor-error", "missing-scan", "runtime-loader-error", "transfer-without-runs",
         "export-resolution-0", "eval-downscale-0", "negative-rays", "no-chamfer-points", "video-fps-0", "export-points-negative", "hydra-blocklist-whole"],
)
def test_bad_input_is_one_line_and_leaves_no_run(launch, tiny, args, expected, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args_tiny = [a for a in tiny if not a.startswith("dataset.")] if "dataset=dtu" in args else tiny
    line = one_line_error(launch(*args_tiny, *args, f"data_dir={data_dir}", f"hydra.run.dir={run_dir}"))
    assert expected in line
    assert not run_dir.exists()


@pytest.mark.slow
def test_existing_run_is_never_overwritten(launch, tiny, finished_run):
    before = (finished_run / "metrics.json").read_text()
    line = one_line_error(launch(*tiny, f"hydra.run.dir={finished_run}"))
    assert str(finished_run) in line and "resume" in line
    assert (finished_run / "metrics.json").read_text() == before


@pytest.mark.slow
def test_multirun_sweeps_encoders(launch, tiny, data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in tiny if not a.startswith("encoder.")]  # options differ between encoders
    result = launch("-m", "encoder=hashgrid,frequency", *args, "trainer.max_steps=3", f"data_dir={data_dir}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["step"] == 3
    assert "FrequencyEncoder" in (sweep / "1" / ".hydra" / "config.yaml").read_text()
    # The sweep's summary (tools.summarize), written when it ends: one row per job, the swept key as a column.
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("job,encoder,chamfer") and [r.split(",")[:2] for r in rows[1:]] == [["0", "hashgrid"], ["1", "frequency"]]


BAD_INPUTS = [["encoder=nope"], ["system.optim.lr=abc"], ["dataset.shape=cube"], ["mode=test"],
              ["resume=/nonexistent/run"], ["encoder.backend=nope"]]


@pytest.mark.parametrize("args", [BAD_INPUTS[0], *(pytest.param(a, marks=pytest.mark.slow) for a in BAD_INPUTS[1:])],
                         ids=lambda a: a[0])
def test_a_user_folder_survives_every_bad_input(launch, tiny, data_dir, tmp_path, args):
    """hydra.run.dir at a folder holding user files (a clone, say): refused, and nothing in it is touched."""
    folder = tmp_path / "clone"
    (folder / ".git").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    one_line_error(launch(*tiny, *args, f"data_dir={data_dir}", f"hydra.run.dir={folder}"))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_an_empty_folder_given_as_run_dir_is_kept_after_a_failed_start(launch, tiny, data_dir, tmp_path):
    """The input error comes after Hydra wrote its files: they go, the user's folder stays."""
    folder = tmp_path / "mine"
    folder.mkdir()
    line = one_line_error(launch(*tiny, "dataset.shape=cube", f"data_dir={data_dir}", f"hydra.run.dir={folder}"))
    assert "dataset.shape" in line
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.slow
def test_resume_of_a_file_that_is_not_a_checkpoint_writes_nothing(launch, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    line = one_line_error(launch(f"resume={notes}"))
    assert str(notes) in line and "not a checkpoint" in line
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_resume_continues_from_the_newest_checkpoint_that_loads(launch, finished_run, tmp_path):
    """last.ckpt older than step000006.ckpt (a kill between the two writes), a truncated newer file and
    leftover temporaries: the run continues at step 6, replaces the broken file, and cleans up."""
    run_dir = tmp_path / "killed"
    shutil.copytree(finished_run, run_dir)
    ckpts = run_dir / "checkpoints"
    shutil.copy(ckpts / "step000003.ckpt", ckpts / "last.ckpt")
    (ckpts / "step000009.ckpt").write_bytes((ckpts / "step000006.ckpt").read_bytes()[:500])
    stale = [ckpts / "last.ckpt.tmp", run_dir / "meshes" / ".final.ply.0a1b2c3d.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    result = launch(f"resume={run_dir}", "trainer.max_steps=9")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step000006.ckpt" in result.stderr and "skipping" in result.stderr
    assert step_of(ckpts / "last.ckpt") == 9 and step_of(ckpts / "step000009.ckpt") == 9
    assert not list(ckpts.glob("*-v*.ckpt")) and not any(p.exists() for p in stale)


def test_group_checks_read_hydra_sweep_syntax():
    from launch import check_group_choices

    check_group_choices(["encoder=choice(hashgrid,frequency)", "encoder=glob(*)", "encoder=hashgrid,nffb", "~camera"])
    with pytest.raises(InputError, match="unknown encoder 'nope'"):
        check_group_choices(["encoder=choice(hashgrid,nope)"])


def test_help_describes_the_tool(launch):
    result = launch("--help")
    assert result.returncode == 0
    for words in ("Modes", "resume=RUN_DIR", "Examples", "encoder: frequency, hashgrid, nffb, stylemod_nffb", "tools.colmap_scene",
                  "dataset=dtu dataset.root=DIR", "dataset.downscale=2 dataset.max_test_views=4"):
        assert words in result.stdout, words


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_a_sweep_goes_on_past_a_bad_job(launch, tiny, data_dir, tmp_path, launcher):
    """In the launcher's own process or in submitit's workers, a failed job is reported and counted at the end."""
    sweep = tmp_path / "sweep"
    result = launch("-m", f"hydra/launcher={launcher}", "dataset.shape=cube,sphere_torus", *tiny, "trainer.max_steps=3",
                    f"data_dir={data_dir}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "1 job(s) of the sweep failed" in errors[-1]
    assert "dataset.shape: unknown shape 'cube'" in (sweep / "failed_jobs.txt").read_text()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["step"] == 3
    summary = (sweep / "summary.md").read_text()
    assert "\n| 1 | " in summary and "job 0: error: dataset.shape: unknown shape 'cube'" in summary


@pytest.mark.slow
def test_resume_auto_continues_each_job_of_a_re_run_sweep(launch, tiny, data_dir, tmp_path):
    """What a requeued cluster job does: the same command again. With resume=auto each job continues from
    its own folder's newest checkpoint (step 3), and a job folder without one starts afresh."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=1,2", *tiny, "trainer.max_steps=3", "resume=auto", f"data_dir={data_dir}", f"hydra.sweep.dir={sweep}"]
    assert launch(*args).returncode == 0
    shutil.rmtree(sweep / "1")  # as if job 1 had been preempted before its first checkpoint
    result = launch(*args, "trainer.max_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["step"] == 6
    assert "resuming from" in (sweep / "0" / "launch.log").read_text()
    assert "resuming from" not in (sweep / "1" / "launch.log").read_text()


def test_a_job_returns_its_objective_for_sweepers():
    """objective=KEY: the value a sweeper (Optuna) minimises or maximises; NaN marks a failed trial."""
    from launch import compose_config, objective_value

    assert objective_value(compose_config(["objective=chamfer"]), {"chamfer": 1.25, "psnr": 30}) == 1.25
    assert math.isnan(objective_value(compose_config(["objective=chamfer"]), None))
    assert math.isnan(objective_value(compose_config(["objective=nope"]), {"chamfer": 1.25}))
    assert objective_value(compose_config([]), {"chamfer": 1.25}) is None


# Shared run folders: what they name or hold must not run on the machine that opens them (README, "Sharing runs").
class Payload:
    """Unpickling this writes ``path``: what a crafted checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('ran')",)


def shared_run(finished_run: Path, folder: Path, overrides: list[str] = ()) -> Path:
    """A copy of a finished run, as downloaded, with ``overrides`` added to its saved ones."""
    shutil.copytree(finished_run, folder)
    saved = folder / ".hydra" / "overrides.yaml"
    saved.write_text(yaml.safe_dump(yaml.safe_load(saved.read_text()) + list(overrides)))
    return folder


def write_text_target(marker: Path) -> str:
    return f"{{_target_:pathlib.Path.write_text,self:{{_target_:pathlib.Path,_args_:['{marker}']}},data:hi}}"


@pytest.mark.parametrize("override, key", [
    pytest.param("+callbacks.x=WRITE", "callbacks.x._target_", marks=pytest.mark.slow),
    pytest.param("+callbacks.y={_target_:torch.load,f:'CKPT',weights_only:false}", "callbacks.y._target_", marks=pytest.mark.slow),
    pytest.param("dataset._target_=os.system", "dataset._target_", marks=pytest.mark.slow),
    pytest.param("hydra.callbacks.x=WRITE", "hydra.callbacks.x", marks=pytest.mark.slow),
], ids=["write-file", "nested-torch-load", "loader-os-system", "hydra-key"])
def test_a_saved_override_naming_foreign_code_is_refused(launch, finished_run, tmp_path, override, key):
    marker = tmp_path / "payload_ran.txt"
    ckpt = tmp_path / "payload.ckpt"
    torch.save({"x": Payload(marker)}, ckpt)
    override = override.replace("WRITE", write_text_target(marker)).replace("CKPT", str(ckpt))
    run_dir = shared_run(finished_run, tmp_path / "shared", [override])
    line = one_line_error(launch(f"resume={run_dir}", "mode=test"))
    assert key in line and "trust_run_targets=true" in line and "overrides.yaml" in line
    assert not marker.exists()
    saved = run_dir / ".hydra" / "overrides.yaml"  # a run cannot trust itself

    saved.write_text(saved.read_text() + "- trust_run_targets=true\n")
    assert launch(f"resume={run_dir}", "mode=test").returncode == 2 and not marker.exists()


@pytest.mark.slow
def test_trusted_targets_still_resume_and_the_flag_trusts_the_rest(launch, finished_run, tmp_path):
    run_dir = shared_run(finished_run, tmp_path / "shared", ["system.optimizer._target_=torch.optim.AdamW",
                                                              "+callbacks.summary={_target_:pytorch_lightning.callbacks.ModelSummary}"])
    result = launch(f"resume={run_dir}", "mode=eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AdamW" in (run_dir / ".hydra" / "config.yaml").read_text()
    marker = tmp_path / "trusted.txt"
    saved = run_dir / ".hydra" / "overrides.yaml"
    saved.write_text(saved.read_text() + f"- +callbacks.x={write_text_target(marker)}\n")
    launch(f"resume={run_dir}", "mode=eval", "trust_run_targets=true")  # Lightning then refuses what write_text returned
    assert marker.read_text() == "hi"


@pytest.mark.slow
def test_transfer_refuses_a_crafted_config(launch, finished_run, tmp_path):
    marker = tmp_path / "payload_ran.txt"
    crafted = shared_run(finished_run, tmp_path / "crafted")
    config = crafted / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["camera"]["noise"] = {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": [str(marker)]},
                              "data": "hi"}
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "transfer"
    line = one_line_error(launch("mode=transfer", f"geometry_run={crafted}", f"appearance_run={finished_run}", f"hydra.run.dir={run_dir}"))
    assert "camera.noise._target_" in line and "pathlib.Path.write_text" in line and str(config) in line and "trust_run_targets" in line
    assert not marker.exists() and not run_dir.exists()


@pytest.mark.slow
def test_a_pickle_payload_checkpoint_never_runs(launch, finished_run, tmp_path):
    marker = tmp_path / "payload_ran.txt"
    run_dir = shared_run(finished_run, tmp_path / "shared")
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        torch.save({**checkpoint, "hyper_parameters": Payload(marker)}, ckpt)
    for mode in ("train", "test"):
        line = one_line_error(launch(f"resume={run_dir}", f"mode={mode}"))
        assert "nothing to resume from" in line
    assert not marker.exists()


@pytest.mark.slow
def test_a_pickle_payload_in_a_finished_sequence_frame_never_runs(launch, tmp_path):
    """Frame 0 done, its last.ckpt crafted; frame 1 holds a checkpoint that loads, so resume takes the run."""
    marker = tmp_path / "payload_ran.txt"
    run_dir = tmp_path / "sequence"
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = ["dataset=synthetic_sequence", "dataset.n_frames=2", "dataset.n_views=4", "dataset.width=32", "dataset.height=24",
                 "dataset.test_every=2", "encoder.compile=false", f"data_dir={tmp_path / 'data'}"]
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 42\n")
    frames = run_dir / "frames"
    (frames / "frame_0000" / "checkpoints").mkdir(parents=True)
    (frames / "frame_0001" / "checkpoints").mkdir(parents=True)
    (frames / "frame_0000" / "metrics.json").write_text(json.dumps({"frame": 0, "steps": 1}))
    torch.save({"state_dict": {}, "global_step": 1, "optimizer_states": [Payload(marker)]}, frames / "frame_0000" / "checkpoints" / "last.ckpt")
    torch.save({"state_dict": {}, "global_step": 0}, frames / "frame_0001" / "checkpoints" / "last.ckpt")
    line = one_line_error(launch(f"resume={run_dir}"))
    assert "frame_0000" in line and "loads safely" in line
    assert not marker.exists()


@pytest.mark.slow
def test_a_folder_with_only_another_apps_hydra_files_is_left_intact(launch, data_dir, tmp_path):
    """.hydra/ and launch.log without our marker: another Hydra app's run, or the user's; refused, nothing deleted."""
    folder = tmp_path / "theirs"
    (folder / ".hydra").mkdir(parents=True)
    files = {".hydra/config.yaml": "lr: 1\n", ".hydra/overrides.yaml": "[]\n", "launch.log": "their log\n"}
    for name, text in files.items():
        (folder / name).write_text(text)
    line = one_line_error(launch("dataset=colmap", "dataset.root=/nonexistent", f"data_dir={data_dir}", f"hydra.run.dir={folder}"))
    assert str(folder) in line
    assert {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()} == files


@pytest.mark.slow
def test_a_run_folder_that_cannot_be_made_is_one_line(launch, tiny, tmp_path):
    """What a read-only or immutable parent gives (root ignores permissions, so a file stands in for the parent)."""
    parent = tmp_path / "not_a_folder"
    parent.write_text("mine")
    line = one_line_error(launch(*tiny, f"hydra.run.dir={parent / 'run'}"))
    assert f"{parent / 'run'}: cannot create the run directory" in line and parent.read_text() == "mine"


def test_the_summary_lists_each_output_file_on_a_line_of_its_own(tmp_path):
    from omegaconf import OmegaConf

    from systems.assembly import summary

    cfg = OmegaConf.create({"name": "tiny", "mode": "video"})
    videos = [str(tmp_path / "video" / "turntable_rgb.mp4"), str(tmp_path / "video" / "turntable_normal.mp4")]
    text = summary(cfg, tmp_path, {"step": 6, "video": videos, "mesh": "m.ply", "textured": ["t.obj", "t.glb"]})
    assert text.splitlines()[3:] == ["mesh         m.ply", "textured     t.obj", "             t.glb",
                                     f"video        {videos[0]}", f"             {videos[1]}"]


def test_a_decimated_export_is_named_after_its_face_count():
    from systems.assembly import compose_config, mesh_filename

    assert mesh_filename(compose_config([]).export) == "final.ply"
    assert mesh_filename(compose_config(["export.target_faces=5000"]).export) == "final_5000.ply"
    assert mesh_filename(compose_config(["export.target_faces=5000", "export.filename=small.obj"]).export) == "small.obj"


@pytest.mark.parametrize(("max_steps", "expected"), [(20, 1), (600, 6), (1500, 15), (100_000, 25)])
def test_a_short_run_logs_often_enough(tmp_path, max_steps, expected):
    from systems.assembly import build_trainer, compose_config

    trainer = build_trainer(compose_config([f"trainer.max_steps={max_steps}"]), tmp_path, [])
    assert trainer.log_every_n_steps == expected
