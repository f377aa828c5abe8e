"""The speed benchmark's measurement and table on a tiny configuration, and its command line."""
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import speed
from benchmarks.speed import CASES, measure, table, viewer_cost

ROOT = Path(__file__).resolve().parents[2]
TINY = ["dataset.n_views=4", "dataset.width=32", "dataset.height=24", "encoder=frequency", "system.model.grid.resolution=16",
        "system.rays.initial=64", "system.rays.target_samples=2048", "system.loss.eikonal_points=64", "trainer.accelerator=cpu"]


def test_measure_times_training_steps_of_a_tiny_config(tmp_path):
    overrides = [*TINY, f"data_dir={tmp_path / 'data'}"]
    result = measure(overrides, steps=2, warmup=1)
    assert result["steps_per_s"] > 0 and abs(result["ms_per_step"] * result["steps_per_s"] - 1000) < 1e-6
    assert result["rays_per_step"] >= 64 and result["samples_per_step"] > 0
    assert result["rays_per_s"] == pytest.approx(result["rays_per_step"] * result["steps_per_s"])
    assert result["peak_mib"] > 100  # the process, with torch loaded
    text = table({"tiny": {**result, "overrides": overrides}}).splitlines()
    assert len(text) == 3 and text[2].startswith("| tiny | ") and text[2].count("|") == 9


@pytest.mark.slow
def test_dry_run_lists_the_cases():
    result = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--dry-run", "encoder.compile=false"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == list(CASES)
    assert all(line.endswith("encoder.compile=false") for line in lines)
    assert "system.model.grid.enabled=false" in lines[1]


def test_viewer_on_measures_with_the_viewer_serving(tmp_path, monkeypatch):
    served = []

    class Serving(speed.ViewerCallback):
        def on_fit_start(self, trainer, pl_module) -> None:
            super().on_fit_start(trainer, pl_module)
            served.append(self.viewer.url)

    monkeypatch.setattr(speed, "ViewerCallback", Serving)
    result = measure([*TINY, f"data_dir={tmp_path / 'data'}", "viewer.enabled=true"], steps=2, warmup=1)
    assert result["steps_per_s"] > 0 and len(served) == 1 and served[0].startswith("http://127.0.0.1:")
    assert "viewer.enabled=true" in CASES["viewer-on"] and set(CASES["viewer-on"]) - set(CASES["grid-on"]) == {"viewer.enabled=true"}


def test_viewer_cost_is_the_step_rate_lost_against_grid_on():
    assert "20.0 % fewer steps/s than grid-on" in viewer_cost({"grid-on": {"steps_per_s": 5.0}, "viewer-on": {"steps_per_s": 4.0}})
    assert viewer_cost({"grid-on": {"steps_per_s": 5.0}}) == ""
