"""Shared fixtures: the shared real data, a small generated synthetic scene, and running launch.py as a user would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# nerfacc and torch.utils.cpp_extension JIT-compile CUDA code on first use (GPU machines only): keep
# their build cache out of the home directory and shared between test sessions.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "sdfrecon_torch_extensions"))
# Without a GPU, Triton's kernels run under its CPU interpreter, so the fused hash-grid tests run in CI. The
# switch is read when a kernel is decorated, i.e. when models.encoders is first imported: it must be set here,
# before any test module is collected. On a CUDA machine the kernels compile for the GPU as in training.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
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


def launch_command(*args: str) -> dict:
    """Keyword arguments of subprocess.run / Popen for ``python launch.py ARGS`` in the repository root."""
    return {"args": [sys.executable, str(ROOT / "launch.py"), *args], "cwd": ROOT, "env": {**os.environ, "PYTHONUNBUFFERED": "1"}}


@pytest.fixture(scope="session")
def launch() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python launch.py ARGS`` in the repository root and return the completed process."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(**launch_command(*args), capture_output=True, text=True, timeout=1800)

    return run


@pytest.fixture(scope="session")
def start_launch() -> Callable[..., subprocess.Popen]:
    """Start ``python launch.py ARGS`` in the background, its stdout discarded and its stderr written to
    the file ``log`` (not a pipe, which would block the process once full while the test polls)."""

    def start(log: Path, *args: str) -> subprocess.Popen:
        with open(log, "w") as stderr:
            return subprocess.Popen(**launch_command(*args), stdout=subprocess.DEVNULL, stderr=stderr)

    return start


@pytest.fixture(scope="session")
def terminate_when() -> Callable[..., int]:
    """``terminate_when(proc, ready)``: send SIGTERM to a started launch.py once ``ready()`` holds (or it has
    exited) and return its exit status; it is killed if it has not stopped ``timeout`` seconds later."""

    def stop(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> int:
        try:
            while proc.poll() is None and not ready():
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()

    return stop


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-view 64x48 synthetic scene in the NeuS layout, generated once per session. Do not modify it."""
    from datasets.synthetic import generate_scene

    return Path(generate_scene(str(tmp_path_factory.mktemp("synthetic") / "scene"), n_views=6, width=64, height=48))


@pytest.fixture(scope="session")
def mask_centroid_rays():
    """A function ``scene -> (centroids (N, 2) pixel coordinates, RayBundle of the N rays through them)``."""
    import torch

    from core.geometry import pixel_rays

    def centroid_rays(scene):
        masks = scene.masks.double()
        height, width = scene.hw
        total = masks.sum((1, 2))
        cx = (masks.sum(1) * (torch.arange(width, dtype=torch.float64) + 0.5)).sum(1) / total
        cy = (masks.sum(2) * (torch.arange(height, dtype=torch.float64) + 0.5)).sum(1) / total
        return torch.stack([cx, cy], -1), pixel_rays(scene.intrinsics.double(), scene.c2w.double(), cx, cy)

    return centroid_rays
