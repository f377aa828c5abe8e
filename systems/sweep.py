"""A sweep's record of its failed jobs: ``failed_jobs.txt`` in the sweep folder, one line per job
(``job N: error: ...``), keyed by the job number so that a sweep re-run with ``resume=auto`` replaces
a job's line rather than adding a second one, and a job that now finishes drops its line. Jobs run
in the launcher's process or in workers (joblib, submitit), so each update holds an exclusive lock on
the sweep folder and rewrites the file atomically."""
from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.io import atomic_write

FAILED_JOBS_FILE = "failed_jobs.txt"
_LINE = re.compile(r"job (\d+): ")


def failed_jobs(sweep_dir: str | Path) -> dict[int, str]:
    """{job number: its line} of ``sweep_dir``'s ``failed_jobs.txt`` (empty without one); the last line of a job wins."""
    path = Path(sweep_dir) / FAILED_JOBS_FILE
    if not path.is_file():
        return {}
    jobs = {}
    for line in path.read_text().splitlines():
        match = _LINE.match(line)
        if match:
            jobs[int(match.group(1))] = line
    return jobs


@contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the sweep folder itself (no lock file left behind)."""
    fd = os.open(sweep_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def record_job(sweep_dir: str | Path, num: int, error: str | None) -> None:
    """Set job ``num``'s line of ``failed_jobs.txt`` to ``job N: ERROR``, or drop it when ``error`` is None
    (the job finished); the file is removed when no failure is left."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir):
        jobs = failed_jobs(sweep_dir)
        if error is None and num not in jobs:
            return
        if error is None:
            del jobs[num]
        else:
            jobs[num] = f"job {num}: {error}"
        path = sweep_dir / FAILED_JOBS_FILE
        if jobs:
            atomic_write(path, "".join(jobs[n] + "\n" for n in sorted(jobs)).encode())
        else:
            path.unlink()
