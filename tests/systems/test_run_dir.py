"""The run directory contract: folder states, the checkpoint a resume takes, and what a failed start removes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from core.errors import InputError
from systems.callbacks import AtomicCheckpointIO
from systems.run_dir import (MARKER, adopt, check_new_run_dir, claim, find_checkpoint, folder_state, load_weights, newest_checkpoint,
                             remove_created, remove_temporaries)


def save(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": step}, path)
    os.utime(path, (mtime, mtime))
    return path


def make_run(root: Path) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text("seed: 1\n")
    return root


def test_folder_states(tmp_path):
    assert folder_state(tmp_path / "new") == "absent"
    assert folder_state(tmp_path) == "empty"
    (tmp_path / "launch.log").write_text("")
    make_run(tmp_path)
    assert folder_state(tmp_path) == "foreign"  # another Hydra app's run, or a user's log: not ours without the marker
    claim(tmp_path)
    assert folder_state(tmp_path) == "started"
    with pytest.raises(InputError, match="resume=auto"):
        check_new_run_dir(tmp_path)
    (tmp_path / MARKER).unlink()
    (tmp_path / "checkpoints").mkdir()
    assert folder_state(tmp_path) == "run"  # a run made before the marker, with results: still ours (resumable)
    adopt(tmp_path)
    assert (tmp_path / MARKER).is_file() and folder_state(tmp_path) == "run"
    (tmp_path / "notes.txt").write_text("mine")
    assert folder_state(tmp_path) == "foreign"
    with pytest.raises(InputError, match="not a run directory of launch.py"):
        check_new_run_dir(tmp_path)
    (tmp_path / "notes.txt").unlink()
    with pytest.raises(InputError, match="already holds a run"):
        check_new_run_dir(tmp_path)


def test_resume_takes_the_newest_checkpoint_that_loads(tmp_path):
    run = make_run(tmp_path / "run")
    ckpts = run / "checkpoints"
    save(ckpts / "last.ckpt", 20, 100.0)           # killed before last.ckpt caught up
    newest = save(ckpts / "step000040.ckpt", 40, 90.0)
    save(ckpts / "step000020.ckpt", 20, 80.0)
    (ckpts / "step000060.ckpt").write_bytes(newest.read_bytes()[:300])  # a truncated write
    assert newest_checkpoint(ckpts) == newest
    assert find_checkpoint(str(run)) == (run, newest)
    save(ckpts / "last.ckpt", 40, 120.0)  # equal steps: the latest written wins
    assert newest_checkpoint(ckpts) == ckpts / "last.ckpt"


def test_resume_refuses_what_is_not_a_run_or_a_checkpoint(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a checkpoint"):
        find_checkpoint(str(notes))
    loose = save(tmp_path / "model.ckpt", 5, 1.0)  # a checkpoint outside a run directory
    with pytest.raises(InputError, match="not a run directory"):
        find_checkpoint(str(loose))
    run = make_run(tmp_path / "run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="no checkpoint that loads"):
        find_checkpoint(str(run))
    with pytest.raises(InputError, match="does not exist"):
        find_checkpoint(str(tmp_path / "missing"))


def test_stale_temporaries_are_removed(tmp_path):
    run = make_run(tmp_path / "run")
    kept = save(run / "checkpoints" / "last.ckpt", 3, 1.0)
    stale = [run / "checkpoints" / "last.ckpt.tmp", run / "meshes" / ".final.ply.1a2b3c4d.tmp", run / ".metrics.json.0f0f0f0f.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    assert sorted(remove_temporaries(run)) == sorted(stale)
    assert kept.is_file() and not any(p.exists() for p in stale)


def test_a_failed_start_removes_only_what_runs_write(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    (run / "data").mkdir()
    for name in (".hydra", "tensorboard"):
        (run / name).mkdir()
    (run / "launch.log").write_text("log")
    remove_created(run, set(), remove_folder=True)
    assert sorted(p.name for p in run.iterdir()) == ["data", "notes.txt"]
    (run / "notes.txt").unlink()
    (run / "data").rmdir()
    (run / ".hydra").mkdir()
    remove_created(run, set(), remove_folder=False)  # a folder the user made stays, empty
    assert run.is_dir() and not any(run.iterdir())
    remove_created(run, set(), remove_folder=True)
    assert not run.exists()


def test_two_runs_claiming_one_new_folder_the_second_is_refused(tmp_path):
    folder = tmp_path / "a" / "new"
    claim(folder)
    first = (folder / MARKER).read_text()
    with pytest.raises(InputError, match="another run claimed this folder"):
        claim(folder)
    assert (folder / MARKER).read_text() == first and [p.name for p in folder.iterdir()] == [MARKER]


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    """What a read-only or immutable parent gives (root ignores permissions, so a file stands in for the parent)."""
    parent = tmp_path / "not_a_folder"
    parent.write_text("")
    with pytest.raises(InputError, match="cannot create the run directory"):
        claim(parent / "run")


class Payload:
    """Unpickling this writes ``path``: what a crafted checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('ran')",)


def test_a_pickle_payload_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "payload_ran.txt"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 3, "extra": Payload(marker)}, ckpt)
    for load in (load_weights, AtomicCheckpointIO().load_checkpoint):  # ours, and Lightning's restore of ckpt_path
        with pytest.raises(InputError, match="not a checkpoint that loads safely") as err:
            load(ckpt)
        assert "\n" not in str(err.value)
    assert not marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "hyper_parameters": {"n_rays": 512.0}}, ckpt)
    assert AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=False)["global_step"] == 3
