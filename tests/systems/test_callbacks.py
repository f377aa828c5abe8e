import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import torch
import trimesh

from core.errors import InputError
from datasets.scene import Scene
from systems.callbacks import Evaluation
from systems.config import Eval
from systems.mesh_io import load_dtu_official, save_mesh


def test_an_empty_exported_mesh_scores_the_distance_cap(tmp_path: Path) -> None:
    """A run that found no surface exports an empty mesh; evaluation scores it max_dist instead of stopping."""
    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "gt.ply")
    save_mesh(tmp_path / "mesh.ply", np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    scene = Scene(images=torch.zeros(1, 4, 4, 3), masks=None, intrinsics=torch.eye(3)[None], c2w=torch.eye(4)[None],
                  scale_mat=np.eye(4), train_ids=[0], test_ids=[], root=str(tmp_path), name="empty",
                  gt_path=str(tmp_path / "gt.ply"))
    evaluation = Evaluation(tmp_path, tmp_path / "mesh.ply", Eval(chamfer_points=1000, max_dist=7.0))
    assert evaluation.chamfer(SimpleNamespace(scene=scene)) == {"chamfer": 7.0, "accuracy": 7.0, "completeness": 7.0}


def write_dtu_files(root: Path, scan: int = 24) -> None:
    """Fabricated DTU evaluation files: STL points on z = 0 over x in [0, 10] (0.2 mm apart) and below the
    ground plane z = -5 on z = -10, and a 1 mm ObsMask over [0, 30]^3 observed where x < 10.5."""
    grid = np.stack(np.meshgrid(np.linspace(0, 10, 51), np.linspace(0, 20, 101), indexing="ij"), -1).reshape(-1, 2)
    below = np.stack(np.meshgrid(np.linspace(0, 20, 21), np.linspace(0, 20, 21), indexing="ij"), -1).reshape(-1, 2)
    stl = np.concatenate([np.c_[grid, np.zeros(len(grid))], np.c_[below, np.full(len(below), -10.0)]])
    (root / "Points" / "stl").mkdir(parents=True)
    (root / "ObsMask").mkdir()
    trimesh.PointCloud(stl).export(root / "Points" / "stl" / f"stl{scan:03d}_total.ply")
    obs_mask = np.zeros((31, 31, 31), dtype=bool)
    obs_mask[:11] = True
    scipy.io.savemat(root / "ObsMask" / f"ObsMask{scan}_10.mat",
                     {"ObsMask": obs_mask, "BB": np.array([[0.0, 0, 0], [30, 30, 30]]), "Res": np.array([[1.0]])})
    scipy.io.savemat(root / "ObsMask" / f"Plane{scan}.mat", {"P": np.array([[0.0], [0], [1], [5]])})


def test_dtu_official_protocol_writes_its_metrics(tmp_path: Path) -> None:
    """The prediction: 1 mm above the STL where observed, a part 3 mm up where not (left out of accuracy) and
    a part 25 mm up (over 20, excluded); the STL points below the plane (11 mm away) do not count."""
    write_dtu_files(tmp_path)
    parts = [trimesh.creation.box(bounds=[[x0, 0, z], [x1, 20, z + 1e-3]]) for x0, x1, z in
             [(0, 10, 1.0), (12, 20, 3.0), (0, 10, 25.0)]]
    mesh = trimesh.util.concatenate(parts)
    save_mesh(tmp_path / "mesh.ply", mesh.vertices, mesh.faces)
    evaluation = Evaluation(tmp_path, tmp_path / "mesh.ply", Eval(protocol="dtu_official", dtu_dir=str(tmp_path)), scan=24)
    module = SimpleNamespace(test_metrics=[], eval_downscale=1, pose_metrics=dict, scene=None)
    evaluation.on_test_end(SimpleNamespace(is_global_zero=True, global_step=3, logger=None), module)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["protocol"] == "dtu_official"
    assert metrics["accuracy"] == pytest.approx(1.0, abs=0.02)
    assert metrics["completeness"] == pytest.approx(1.0, abs=0.02)
    assert metrics["chamfer"] == pytest.approx(1.0, abs=0.02)


def test_dtu_official_protocol_refuses_missing_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^eval\.protocol: unknown value 'dtu'"):
        Evaluation(tmp_path, tmp_path / "mesh.ply", Eval(protocol="dtu"))
    with pytest.raises(InputError, match=r"^eval\.dtu_dir: "):
        Evaluation(tmp_path, tmp_path / "mesh.ply", Eval(protocol="dtu_official"), scan=24)
    with pytest.raises(InputError, match=r"stl024_total\.ply: DTU evaluation file not found"):
        Evaluation(tmp_path, tmp_path / "mesh.ply", Eval(protocol="dtu_official", dtu_dir=str(tmp_path)), scan=24)
    write_dtu_files(tmp_path)
    stl = tmp_path / "Points" / "stl" / "stl024_total.ply"
    stl.with_name("stl037_total.ply").write_bytes(stl.read_bytes())
    with pytest.raises(InputError, match=r"ObsMask37_10\.mat: DTU evaluation file not found"):
        Evaluation(tmp_path, tmp_path / "mesh.ply", Eval(protocol="dtu_official", dtu_dir=str(tmp_path)), scan=37)
    (tmp_path / "ObsMask" / "Plane24.mat").write_bytes(b"not a MATLAB file")
    with pytest.raises(InputError, match=r"Plane24\.mat: cannot read MATLAB file"):
        load_dtu_official(tmp_path, 24)
    scipy.io.savemat(tmp_path / "ObsMask" / "Plane24.mat", {"P": np.ones(4)})
    scipy.io.savemat(tmp_path / "ObsMask" / "ObsMask24_10.mat", {"ObsMask": np.ones((4, 4)), "BB": np.zeros((2, 3)), "Res": 1.0})
    with pytest.raises(InputError, match=r"ObsMask24_10\.mat: expected ObsMask \(X, Y, Z\)"):
        load_dtu_official(tmp_path, 24)
    scipy.io.savemat(tmp_path / "ObsMask" / "ObsMask24_10.mat", {"BB": np.zeros((2, 3)), "Res": 1.0})
    with pytest.raises(InputError, match=r"ObsMask24_10\.mat: missing variable ObsMask$"):
        load_dtu_official(tmp_path, 24)


def test_train_time_is_summed_over_resumes_and_excludes_fit_start(monkeypatch) -> None:
    from systems import callbacks

    clock = iter([100.0, 130.0, 500.0, 512.0])
    monkeypatch.setattr(callbacks.time, "time", lambda: next(clock))
    first = callbacks.TrainTime()
    first.on_train_start(None, None)  # t=100
    first.on_train_end(None, None)  # t=130: 30 s trained
    saved = first.state_dict()
    assert saved == {"train_time_s": 30.0}
    resumed = callbacks.TrainTime()  # a new process: Lightning restores the callback's state from the checkpoint
    resumed.load_state_dict(saved)
    assert resumed.seconds == 30.0
    resumed.on_train_start(None, None)  # t=500 (after on_fit_start's hull carving)
    resumed.on_train_end(None, None)  # t=512
    assert resumed.seconds == 42.0


def test_stop_reason_names_the_limit_that_ended_training() -> None:
    from pytorch_lightning.callbacks import Timer

    from systems.callbacks import stop_reason

    timer = Timer(duration="00:00:00:01")
    by_steps = SimpleNamespace(global_step=6, max_steps=6, callbacks=[timer])
    assert stop_reason(by_steps) == "training ended at step 6: trainer.max_steps=6 reached"
    timer.time_remaining = lambda stage="train": 0.0  # the Timer's budget used up
    by_time = SimpleNamespace(global_step=4, max_steps=6, callbacks=[timer])
    assert stop_reason(by_time).startswith("training ended at step 4 of trainer.max_steps=6: trainer.max_time reached")
    assert "before either limit" in stop_reason(SimpleNamespace(global_step=4, max_steps=6, callbacks=[]))
