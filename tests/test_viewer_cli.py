"""The viewer from the command line: mode=view of a finished run, served until SIGTERM and screenshotted in a real
headless browser (Debian's chromium, which .ci/run installs); the refusal under -m sweeps."""
from __future__ import annotations

import base64
import json
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
from websockets.sync.client import connect

ADDRESS = re.compile(r"viewer: open (http://\S+) in a browser")
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--window-size=800,600"]
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def finished_run(launch, tiny, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = launch(*tiny, f"data_dir={tmp_path_factory.mktemp('data')}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def logged(proc: subprocess.Popen, log: Path, pattern: str, start: int = 0, timeout: float = 300) -> re.Match:
    """The first match of ``pattern`` in ``log`` after byte ``start``, once ``proc`` has written it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        match = re.search(pattern, log.read_bytes()[start:].decode()) if log.is_file() else None
        if match:
            return match
        time.sleep(0.5)
    stop(proc)
    raise AssertionError(f"{pattern!r} not in {log} (exit status {proc.poll()}): {log.read_text()[-2000:] if log.is_file() else ''}")


def view(start_launch, run_dir: Path, stderr: Path) -> tuple[subprocess.Popen, str]:
    """Start ``mode=view`` of ``run_dir``; the process and the address it logs in the run's launch.log once it serves."""
    log = run_dir / "launch.log"
    before = log.stat().st_size
    proc = start_launch(stderr, f"resume={run_dir}", "mode=view")
    url = logged(proc, log, ADDRESS.pattern, before).group(1)
    logged(proc, log, "viewer: serving", before)
    return proc, url


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def screenshot(url: str, path: Path, profile: Path) -> np.ndarray:
    """An 800 x 600 screenshot (H, W, 3) of ``url`` in headless Chromium, WebGL rendered in software (SwiftShader)."""
    done = subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", "--virtual-time-budget=30000", f"--screenshot={path}", url],
                          capture_output=True, text=True, timeout=300)
    assert path.is_file(), done.stderr[-2000:]
    return iio.imread(path)[..., :3]


def live_screenshot(devtools_port: int) -> np.ndarray:
    """A screenshot (H, W, 3) of the page open in a running headless Chromium, over its DevTools protocol."""
    with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json", timeout=30) as listing:
        page = next(p for p in json.load(listing) if p["type"] == "page")
    with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
        ws.send(json.dumps({"id": 1, "method": "Page.captureScreenshot", "params": {"format": "png"}}))
        while (reply := json.loads(ws.recv())).get("id") != 1:
            pass
    return iio.imread(base64.b64decode(reply["result"]["data"]))[..., :3]


def mesh_in_middle(image: np.ndarray) -> float:
    """The fraction of a 60 x 60 square in the middle of a screenshot (H, W, 3) that looks like the mesh: the
    view starts looking at the object's centre, and a barely trained colour network paints it grey-ish, neither
    the white page nor the black of a camera thumbnail."""
    h, w = image.shape[0] // 2, image.shape[1] // 2
    middle = image[h - 30:h + 30, w - 30:w + 30].astype(int)
    return float(((middle.min(-1) <= 235) & (middle.max(-1) > 40)).mean())


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
@needs_chromium
def test_view_mode_shows_the_mesh_in_headless_chromium(finished_run, start_launch, tmp_path):
    proc, url = view(start_launch, finished_run, tmp_path / "stderr.txt")
    try:
        image = screenshot(url, tmp_path / "view.png", tmp_path / "profile")
    finally:
        stop(proc)
    assert image.shape == (600, 800, 3)
    assert mesh_in_middle(image) > 0.8
    assert (image[450:550, 100:300].min(-1) > 235).mean() > 0.9  # below the cameras: the white page


@pytest.mark.slow
@needs_chromium
def test_live_viewer_shows_the_mesh_after_its_first_refresh(start_launch, tiny, tmp_path):
    run_dir = tmp_path / "run"
    train = start_launch(tmp_path / "stderr.txt", *tiny, "trainer.max_steps=1000", f"data_dir={tmp_path / 'data'}",
                         f"hydra.run.dir={run_dir}", "viewer.enabled=true", "viewer.refresh_every=2", "viewer.mesh_resolution=32")
    browser = None
    try:
        url = logged(train, run_dir / "launch.log", ADDRESS.pattern).group(1)
        # A browser that stays open (the viewer re-meshes only while one is connected), watched over DevTools.
        with open(tmp_path / "chromium.txt", "w") as out:
            browser = subprocess.Popen([*CHROMIUM, f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", url],
                                       stdout=out, stderr=subprocess.STDOUT)
        devtools = int(logged(browser, tmp_path / "chromium.txt", r"DevTools listening on ws://127.0.0.1:(\d+)/").group(1))
        logged(train, run_dir / "launch.log", r"viewer: showing the mesh of step \d+")
        deadline = time.time() + 120
        while mesh_in_middle(image := live_screenshot(devtools)) <= 0.8 and time.time() < deadline:
            time.sleep(1)
        iio.imwrite(tmp_path / "live.png", image)
    finally:
        if browser is not None:
            browser.kill()
            browser.wait()
        stop(train)
    assert mesh_in_middle(image) > 0.8


def test_sweeps_refuse_the_viewer(launch, tiny, tmp_path):
    sweep = tmp_path / "sweep"
    result = launch("-m", "seed=1,2", "viewer.enabled=true", *tiny, f"data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert "error: viewer.enabled: the viewer shows one run; start it without -m" in result.stderr
    assert not list(sweep.rglob("checkpoints"))
