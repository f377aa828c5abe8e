"""benchmarks/gpu_check.py: the plan of a GPU run, and every stage of it on tiny sizes on the CPU (--smoke)."""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import BUDGET_S, EVAL_S, RECIPE_MAX_TIME_S, STAGES, first_reaching, train_overrides
from launch import compose_config

ROOT = Path(__file__).resolve().parents[2]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_dry_run_prints_the_plan_of_a_gpu_run():
    result = gpu_check("--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == list(STAGES)
    extras, tests, _, speed, train = lines
    assert "pip install nerfacc==0.5.3" in extras and "tiny-cuda-nn" in extras
    assert "test_fused_hashgrid.py" in tests and "--collect-only" not in tests
    assert speed.count("trainer.precision=16-mixed") == 2 and speed.count("system.model.grid.enabled=false") == 2
    assert "encoder.log2_table_size=19" in speed
    assert "experiment=dtu-neus-gpu" in train and "IoU >= 0.98" in train


def test_training_is_capped_to_what_the_budget_leaves():
    max_time = compose_config(["experiment=dtu-neus-gpu"]).trainer.max_time
    days, hours, minutes, seconds = (int(part) for part in max_time.split(":"))
    assert ((days * 24 + hours) * 60 + minutes) * 60 + seconds == RECIPE_MAX_TIME_S < BUDGET_S - EVAL_S
    assert train_overrides(False, Path("d")) == ["experiment=dtu-neus-gpu", "data_dir=d"]  # the recipe's own cap
    assert train_overrides(False, Path("d"), 100)[-1] == "trainer.max_time=00:00:00:40"
    assert train_overrides(False, Path("d"), EVAL_S + 95)[-1] == "trainer.max_time=00:00:01:35"
    assert train_overrides(False, Path("d"), 0)[-1] == "trainer.max_time=00:00:00:30"


@pytest.mark.slow
def test_smoke_runs_every_stage_on_the_cpu(tmp_path):
    benchmarks_md = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    result = gpu_check("--smoke", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert all(f"== {stage}\n" in out for stage in STAGES)
    assert f"triton {importlib.metadata.version('triton')}: fused kernels run under the CPU interpreter" in out
    assert "tiny-cuda-nn: not installed (not on the package index" in out
    assert "tests collected" in out and "(collected only: they need CUDA)" in out
    fused = next(line for line in out.splitlines() if line.startswith("| hash grid | fused Triton (CPU interpreter)"))
    diffs = [float(cell) for cell in fused.strip(" |").split(" | ")[-3:]]
    assert max(diffs) < 1e-4  # outputs, table and point gradients against the PyTorch encoder
    assert "| occupancy grid | nerfacc marching | skipped: needs CUDA and nerfacc |" in out
    assert "| grid-on, 32-true |" in out and "| grid-off, 32-true |" in out
    assert "trainer.precision=16-mixed: skipped (needs CUDA)" in out
    assert "steps, train time" in out and "IoU >= 0.98 (first held-out view, every 3 steps): not reached" in out
    assert "### GPU check" in out
    assert (ROOT / "docs" / "BENCHMARKS.md").read_text() == benchmarks_md  # a smoke run writes no figures
    reached = first_reaching(tmp_path / "train", "val/iou", 0.0)
    assert reached is not None and reached[0] in (2, 3) and reached[1] >= 0  # the first validation, after 3 steps
    assert first_reaching(tmp_path / "train", "val/iou", 1.01) is None
