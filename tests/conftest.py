"""Shared fixtures: the shared real data, and running launch.py as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# A tiny synthetic scene and budget for end-to-end runs of the CLI.
TINY = [
    "dataset.n_views=8", "dataset.width=64", "dataset.height=48", "dataset.test_every=4",
    "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.checkpoint_every_n_steps=3",
    "trainer.log_every_n_steps=1", "export.resolution=32", "eval.chamfer_points=5000",
    "system.rays.initial=128", "system.rays.target_samples=4096", "system.model.grid.resolution=32",
    "encoder.compile=false",
]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def launch() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python launch.py ARGS`` in the repository root and return the completed process."""

    def run(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)

    return run


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    return list(TINY)
