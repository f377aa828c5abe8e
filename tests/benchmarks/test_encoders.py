"""benchmarks/encoders.py end to end: a two-encoder multirun on a tiny scene gives one table with both rows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_prints_one_multirun_per_scene(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.encoders", "--dry-run", "--dtu", "--minutes", "1.5",
                             "--out", str(tmp_path), "seed=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    synthetic, dtu = result.stdout.strip().splitlines()
    assert "-m encoder=frequency,hashgrid,nffb,stylemod_nffb" in synthetic and "trainer.max_time=00:00:01:30" in synthetic
    assert synthetic.endswith(f"seed=3 hydra.sweep.dir={tmp_path / 'synthetic'}")
    assert "dataset=dtu scan=24" in dtu and "system.eval_downscale=2" in dtu and "trainer.max_time=00:00:10:00" in dtu
    assert not (tmp_path / "synthetic").exists()


@pytest.mark.slow
def test_two_encoder_multirun_table(tiny, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.encoders", "--encoders", "hashgrid", "nffb", "--minutes", "1", "--max-steps", "4",
         "--no-append", "--out", str(tmp_path / "bench"), *[a for a in tiny if not a.startswith("trainer.max_steps=")],
         f"data_dir={tmp_path / 'data'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| encoder")}
    assert set(rows) == {"hashgrid", "nffb"}
    for params, steps, its, chamfer, *dtu in rows.values():
        assert int(params.replace(",", "")) > 100_000
        assert int(steps) == 4 and float(its) > 0 and float(chamfer) > 0
        assert dtu == ["-"] * 4  # no --dtu
    assert int(rows["hashgrid"][0].replace(",", "")) != int(rows["nffb"][0].replace(",", ""))
