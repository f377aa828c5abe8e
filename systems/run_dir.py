"""The run directory contract: what makes a folder a run of ours, which checkpoint a resume takes,
and what a failed start may remove. Nothing here deletes a file this tool did not write.

A run of ours holds :data:`MARKER` (``.sdfrecon-run``, the run's id), which a new run creates exclusively
before anything else, so of two runs started into one new folder the second is refused. Runs made before
the marker existed count as ours when they hold ``.hydra/`` and results; resuming one adds the marker.
Checkpoints are read with ``weights_only=True``: opening a run never unpickles code."""
from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
import zipfile
from pathlib import Path

import torch

from core.errors import InputError

log = logging.getLogger(__name__)

# What Hydra writes into a run directory before the job starts (``hydra.job.name`` is ``launch``).
HYDRA_ENTRIES = frozenset({".hydra", "launch.log"})
# The file that makes a folder a run of ours: written only by :func:`claim` and :func:`adopt`, holding the run's id.
MARKER = ".sdfrecon-run"
# What a run writes once it has started: its presence makes a folder a run with results.
RESULT_ENTRIES = frozenset({"checkpoints", "meshes", "metrics.json", "renders", "cameras_refined.npz", "tensorboard", "transfer",
                            "inspect", "video", "frames", "frames.csv"})


def folder_state(path: Path) -> str:
    """What ``path`` holds: ``absent``; ``empty``; ``started`` (our marker and Hydra's files only: a run
    of ours that stopped before writing anything); ``run`` (a run of ours with results: the marker, or for
    runs older than it, ``.hydra/`` and a result); ``foreign`` (anything else, e.g. another app's
    ``.hydra/`` and ``launch.log``: a folder this tool must not write into)."""
    if not path.exists():
        return "absent"
    if not path.is_dir():
        return "foreign"
    names = {p.name for p in path.iterdir()}
    if not names:
        return "empty"
    ours = (path / MARKER).is_file()
    if ours and names <= HYDRA_ENTRIES | {MARKER}:
        return "started"
    if (path / ".hydra").is_dir() and names <= HYDRA_ENTRIES | RESULT_ENTRIES | {MARKER} and (ours or names & RESULT_ENTRIES):
        return "run"
    return "foreign"


def claim(path: Path) -> None:
    """Make ``path`` this run's folder: create it and its :data:`MARKER` exclusively (``O_EXCL``), so of two
    runs started into one new folder at the same moment the second is refused (InputError)."""
    run_id = f"{uuid.uuid4().hex} pid {os.getpid()}\n".encode()
    try:
        path.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError as err:
        raise InputError(path, "another run claimed this folder at the same moment; choose a new hydra.run.dir") from err
    except OSError as err:  # a read-only or immutable parent, a full disk
        raise InputError(path, f"cannot create the run directory ({err.strerror or type(err).__name__})") from err
    with os.fdopen(descriptor, "wb") as file:
        file.write(run_id)


def adopt(path: Path) -> None:
    """Mark a run of ours that has no :data:`MARKER` (one made before it existed, resumed now)."""
    if (path / MARKER).exists():
        return
    try:
        claim(path)
    except InputError:  # written by a rank or job beside this one
        pass


def check_new_run_dir(path: Path) -> None:
    """Refuse to start a new run in ``path`` unless it is absent or empty (a run of ours that never got
    further than Hydra's files starts again with ``resume=auto``)."""
    state = folder_state(path)
    if state == "started":
        raise InputError(path, "run directory holds a run of ours that stopped before its first results (or is starting "
                               "now); pass resume=auto to start it again or choose a new hydra.run.dir")
    if state == "run":
        raise InputError(path, "run directory already holds a run; pass resume=DIR to continue it or choose a new hydra.run.dir")
    if state == "foreign":
        raise InputError(path, "folder is not empty and is not a run directory of launch.py; choose a new or empty hydra.run.dir")


def load_weights(path: Path, mmap: bool = False) -> dict:
    """A checkpoint of ours (weights, step, optimiser and loop state), loaded with ``weights_only=True``
    (tensors and plain types only, nothing that runs code); InputError for anything else."""
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a checkpoint (not a PyTorch zip archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for truncated, foreign or pickled files
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        reason = (f"it pickles {code.group(1)}, which is never unpickled here" if code else
                  f"{type(err).__name__}: {next((line.strip() for line in text.splitlines() if line.strip()), '')}")
        raise InputError(path, f"not a checkpoint that loads safely ({reason})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        raise InputError(path, "not a checkpoint of launch.py (no state_dict and global_step)")
    return checkpoint


def checkpoint_step(path: Path) -> int:
    """The training step saved in checkpoint ``path``; InputError if it is not a checkpoint of ours."""
    return int(load_weights(path, mmap=True)["global_step"])


def newest_checkpoint(folder: Path) -> Path:
    """The checkpoint of ``folder`` with the highest step that loads (the most recently written among
    equal steps); unreadable ones are skipped with a warning."""
    best: tuple[int, float, Path] | None = None
    for path in sorted(folder.glob("*.ckpt")):
        try:
            key = (checkpoint_step(path), path.stat().st_mtime, path)
        except InputError as err:
            log.warning("skipping %s", err)
            continue
        best = key if best is None or key[:2] > best[:2] else best
    if best is None:
        raise InputError(folder, "no checkpoint that loads; nothing to resume from")
    return best[2]


def find_checkpoint(path: str) -> tuple[Path, Path]:
    """(run directory, checkpoint file) of ``resume=PATH``: a run directory (its newest checkpoint
    that loads) or a checkpoint file inside one."""
    p = Path(path)
    if not p.exists():
        raise InputError(path, "resume path does not exist")
    if p.is_file():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        checkpoint_step(p)
        ckpt = p
    else:
        run_dir = p
        ckpt = None
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise InputError(run_dir, "not a run directory of launch.py (no .hydra/config.yaml); resume takes a run directory or a checkpoint in one")
    return run_dir, ckpt or run_checkpoint(run_dir)


def run_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint that loads of a run directory: in ``checkpoints/``, or for a sequence run
    (``frames/frame_XXXX/checkpoints/``) in its latest frame that has one."""
    if not (run_dir / "checkpoints").is_dir() and (run_dir / "frames").is_dir():
        for folder in sorted((run_dir / "frames").glob("*/checkpoints"), reverse=True):
            try:
                return newest_checkpoint(folder)
            except InputError:
                continue
    return newest_checkpoint(run_dir / "checkpoints")


def own_checkpoint(run_dir: Path) -> str | None:
    """``resume=auto``: ``run_dir`` itself when it is a run of ours with a checkpoint that loads (a
    requeued or re-run job continues there), None when it has none yet (the job starts afresh)."""
    if folder_state(run_dir) != "run":
        return None
    try:
        run_checkpoint(run_dir)
    except InputError:
        return None
    return str(run_dir)


def remove_temporaries(run_dir: Path) -> list[Path]:
    """Delete the ``*.tmp`` files that killed writes of checkpoints, meshes and results left in
    ``run_dir``; returns them."""
    stale = [p for pattern in ("*.tmp", "checkpoints/*.tmp", "meshes/*.tmp", "video/*.tmp") for p in run_dir.glob(pattern) if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def remove_created(run_dir: Path, kept: set[str], remove_folder: bool) -> None:
    """Undo a failed start of a run that claimed ``run_dir`` in this process: delete the entries that Hydra
    or a run writes and that were not there before (``kept``), then the folder itself when ``remove_folder``
    and it is empty. Anything else in the folder is left alone."""
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.name in kept or entry.name not in HYDRA_ENTRIES | RESULT_ENTRIES | {MARKER}:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if remove_folder and not any(run_dir.iterdir()):
        run_dir.rmdir()
