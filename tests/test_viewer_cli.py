"""The viewer from the command line: mode=view of a finished run, served until SIGTERM and screenshotted in a real
headless browser (Debian's chromium, which .ci/run installs); the refusal under -m sweeps."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

ADDRESS = re.compile(r"viewer: open (http://\S+) in a browser")


@pytest.fixture(scope="module")
def finished_run(launch, tiny, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = launch(*tiny, f"data_dir={tmp_path_factory.mktemp('data')}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def view(start_launch, run_dir: Path, stderr: Path) -> tuple[subprocess.Popen, str]:
    """Start ``mode=view`` of ``run_dir``; the process and the address it logs in the run's launch.log once it serves."""
    log = run_dir / "launch.log"
    before = log.stat().st_size
    proc = start_launch(stderr, f"resume={run_dir}", "mode=view")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        new = log.read_bytes()[before:].decode()
        match = ADDRESS.search(new)
        if match and "serving" in new:
            return proc, match.group(1)
        time.sleep(0.5)
    stop(proc)
    raise AssertionError(f"no viewer address (exit status {proc.poll()}): {stderr.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def screenshot(url: str, path: Path, profile: Path) -> np.ndarray:
    """An 800 x 600 screenshot (H, W, 3) of ``url`` in headless Chromium, WebGL rendered in software (SwiftShader)."""
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
                           "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", "--window-size=800,600",
                           "--virtual-time-budget=30000", f"--screenshot={path}", url], capture_output=True, text=True, timeout=300)
    assert path.is_file(), done.stderr[-2000:]
    return iio.imread(path)[..., :3]


@pytest.mark.slow
def test_view_mode_serves_the_run_until_sigterm(finished_run, start_launch, tmp_path):
    proc, url = view(start_launch, finished_run, tmp_path / "stderr.txt")
    try:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert not list(finished_run.rglob("*.tmp"))


@pytest.mark.slow
def test_view_mode_shows_the_mesh_in_headless_chromium(finished_run, start_launch, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    proc, url = view(start_launch, finished_run, tmp_path / "stderr.txt")
    try:
        image = screenshot(url, tmp_path / "view.png", tmp_path / "profile")
    finally:
        stop(proc)
    assert image.shape == (600, 800, 3)
    background = image.min(-1) > 235  # the page is white where nothing is drawn
    # The view starts looking at the object's centre: the middle of the canvas is the mesh (grey-ish colours of a
    # barely trained colour network, neither the white page nor the black of a camera thumbnail) ...
    centre = image[270:330, 370:430].astype(int)
    mesh_like = ~background[270:330, 370:430] & (centre.max(-1) > 40)
    assert mesh_like.mean() > 0.8
    # ... while the bottom-left corner (below the camera frustums, left of nothing) is the page.
    assert background[450:550, 100:300].mean() > 0.9


def test_sweeps_refuse_the_viewer(launch, tiny, tmp_path):
    sweep = tmp_path / "sweep"
    result = launch("-m", "seed=1,2", "viewer.enabled=true", *tiny, f"data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert "error: viewer.enabled: the viewer shows one run; start it without -m" in result.stderr
    assert not list(sweep.rglob("checkpoints"))
