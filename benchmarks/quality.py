"""Quality benchmark: run launch.py jobs, print one table, append it to docs/BENCHMARKS.md.

    python -m benchmarks.quality                  # the default synthetic run (issue target: Chamfer <= 1.5 in 10 min)
    python -m benchmarks.quality --dtu            # + DTU scan24, 4 held-out views, 20 minutes
    python -m benchmarks.quality --jobs synthetic-cameras synthetic-idr-cameras   # trainable cameras from noisy poses
    python -m benchmarks.quality --jobs synthetic-3000 synthetic-cameras-3000     # the same at twice the length, where
    python -m benchmarks.quality --jobs synthetic-idr-3580 synthetic-idr-cameras-3580   # the poses get under 0.5 degrees
    python -m benchmarks.quality --jobs synthetic-6000 synthetic-cameras-6000     # NeuS: both issue-5 targets (~75 min a job)
    python -m benchmarks.quality --jobs synthetic synthetic-idr encoder-nffb --shapes all   # every built-in object
    python -m benchmarks.quality --jobs synthetic synthetic-volsdf --shapes all --parallel 2 trainer.max_steps=1000
                                                  # NeuS and VolSDF side by side on each shape, one thread each
    python -m benchmarks.quality --dry-run        # print the commands only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from datasets.synthetic import SHAPES

ROOT = Path(__file__).resolve().parents[1]

ENCODERS = ("hashgrid", "frequency", "nffb", "stylemod_nffb")
# Recipes are configs/experiment/*.yaml; the long variants below only change the length.
NEUS_3000 = ["trainer.max_time=00:01:00:00", "trainer.max_steps=3000"]
NEUS_6000 = ["trainer.max_time=00:02:00:00", "trainer.max_steps=6000"]
IDR_3580 = ["trainer.max_time=00:02:00:00", "trainer.max_steps=3580"]  # twice the 1790 of earlier IDR rows
JOBS = {
    "synthetic": [],
    "dtu24": ["experiment=dtu-neus", f"data_dir={ROOT.parent / 'shared' / 'data'}"],
    "synthetic-idr": ["experiment=idr"],
    "synthetic-volsdf": ["system=volsdf"],
    # Issue 5: 3 degrees and 2 % centre noise, against the fixed-camera jobs of the same length; IDR with
    # BARF's coarse-to-fine window on its positional encoding.
    "synthetic-cameras": ["experiment=noisy-cameras"],
    "synthetic-idr-cameras": ["experiment=idr-noisy-cameras"],
    # Twice as long, by steps (no time cap), each with its fixed-camera job; the BARF window scales with the length.
    "synthetic-3000": NEUS_3000,
    "synthetic-cameras-3000": ["experiment=noisy-cameras", *NEUS_3000],
    "synthetic-idr-3580": ["experiment=idr", *IDR_3580],
    "synthetic-idr-cameras-3580": ["experiment=idr-noisy-cameras", *IDR_3580, "encoder.window_end=2000"],
    # NeuS four times as long: its poses reach about 0.1 degrees, which its sharper surface needs.
    "synthetic-6000": NEUS_6000,
    "synthetic-cameras-6000": ["experiment=noisy-cameras", *NEUS_6000],
    # Issue 17: every encoder with NeuS's default recipe in 8 minutes (run them with --shapes all).
    **{f"encoder-{name}": [f"encoder={name}", "trainer.max_time=00:00:08:00"] for name in ENCODERS},
}


def commit_id() -> str:
    """The short hash of the checked-out commit, which every benchmark report names."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def job_overrides(job: str) -> list[str]:
    """The overrides of ``job``: a name of JOBS, or ``name@shape`` for that job on a synthetic shape."""
    name, _, shape = job.partition("@")
    return [*JOBS[name], *([f"dataset.shape={shape}"] if shape else [])]


def launch(overrides: list[str], run_dir: Path, threads: int | None = None) -> dict:
    """Run launch.py with ``overrides`` into ``run_dir`` (on ``threads`` CPU threads; None: PyTorch's default);
    its metrics.json with the wall time and command."""
    started = time.time()
    cmd = [sys.executable, "launch.py", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**metrics, "wall_s": round(time.time() - started, 1), "command": "python launch.py " + " ".join(overrides)}


def run(name: str, extra: list[str], out: Path, threads: int | None = None) -> dict:
    """Job ``name`` of JOBS (with ``extra`` overrides) into ``out/<name>``."""
    return launch([*job_overrides(name), *extra], out / name.replace("@", "_"), threads)


def table(rows: dict[str, dict]) -> str:
    head = ("| job | steps | train s | wall s | Chamfer | acc | comp | PSNR | IoU | rot. err. ° (start) | centre err. (start) | command |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda m, k, f: format(m[k], f) if k in m else "-"  # noqa: E731
    lines = [f"| {n} | {m['step']} | {m.get('train_time_s', '-')} | {m['wall_s']} | {fmt(m, 'chamfer', '.3f')} | "
             f"{fmt(m, 'accuracy', '.3f')} | {fmt(m, 'completeness', '.3f')} | {fmt(m, 'psnr', '.2f')} | {fmt(m, 'iou', '.4f')} | "
             f"{fmt(m, 'rotation_error_deg', '.3f')} ({fmt(m, 'rotation_error_deg_init', '.2f')}) | "
             f"{fmt(m, 'centre_error', '.4f')} ({fmt(m, 'centre_error_init', '.4f')}) | `{m['command']}` |" for n, m in rows.items()]
    return "\n".join([head, *lines])


def publish(report: str, append: bool = True) -> None:
    """Print a benchmark report and, with ``append``, add it to docs/BENCHMARKS.md."""
    print(report)
    if append:
        with open(ROOT / "docs" / "BENCHMARKS.md", "a") as f:
            f.write(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=["synthetic"], choices=sorted(JOBS))
    parser.add_argument("--dtu", action="store_true", help="add the DTU scan24 job")
    parser.add_argument("--shapes", nargs="+", choices=[*SHAPES, "all"], help="run every job on each of these synthetic shapes")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/BENCHMARKS.md")
    parser.add_argument("--parallel", type=int, default=1,
                        help="run this many jobs at a time, the CPU threads shared out among them (same CPU time each)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every job")
    args = parser.parse_args()
    jobs = args.jobs + (["dtu24"] if args.dtu and "dtu24" not in args.jobs else [])
    if args.shapes:
        shapes = list(SHAPES) if "all" in args.shapes else args.shapes
        jobs = [f"{job}@{shape}" for shape in shapes for job in jobs]  # shape by shape: --parallel pairs jobs on one shape
    if args.dry_run:
        for name in jobs:
            print("python launch.py " + " ".join([*job_overrides(name), *args.overrides]))
        return
    threads = max(1, (os.cpu_count() or 1) // args.parallel) if args.parallel > 1 else None
    with ThreadPoolExecutor(args.parallel) as pool:
        results = pool.map(lambda name: run(name, args.overrides, args.out, threads), jobs)
        rows = dict(zip(jobs, results))
    commit = commit_id()
    device = device_name() + (f"; {args.parallel} jobs at a time, {threads} thread(s) each" if threads else "")
    report = f"\n### Quality, {date.today()}, commit {commit}, {device}\n\n{table(rows)}\n"
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
