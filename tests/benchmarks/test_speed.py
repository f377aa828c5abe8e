"""The speed benchmark's measurement and table on a tiny configuration, and its command line."""
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.speed import CASES, measure, table

ROOT = Path(__file__).resolve().parents[2]


def test_measure_times_training_steps_of_a_tiny_config(tmp_path):
    overrides = ["dataset.n_views=4", "dataset.width=32", "dataset.height=24", f"data_dir={tmp_path / 'data'}",
                 "encoder=frequency", "system.model.grid.resolution=16", "system.rays.initial=64",
                 "system.rays.target_samples=2048", "system.loss.eikonal_points=64", "trainer.accelerator=cpu"]
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
