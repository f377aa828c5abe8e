"""Speed benchmark: cost of a NeuS training step, printed as one table and appended to docs/BENCHMARKS.md.

Each case builds the system as launch.py does (configs/config.yaml composed with the case's
overrides, ``systems.assembly.build_system``) and times ``--steps`` training steps after ``--warmup`` steps
(torch.compile, the first grid updates and the adaptive ray count settle there), without
validation, checkpoints or evaluation. Every case runs in a fresh process, so its peak memory is its
own: ``torch.cuda.max_memory_allocated`` on a GPU, the process's ``ru_maxrss`` on the CPU. The
cases compare the occupancy grid on and off, and scale the synthetic scene's images (1x, 2x, 4x
of 200x150) and view count (25, 49): the step cost should not grow with the dataset. ``viewer-on`` is
``grid-on`` with the live viewer serving (``viewer.enabled=true``) and no browser connected: its cost,
reported as a percentage of ``grid-on``'s step rate, should stay within 5 %.

    python -m benchmarks.speed                       # all cases
    python -m benchmarks.speed --cases grid-on grid-off --steps 20
    python -m benchmarks.speed --cases grid-on viewer-on   # the viewer's cost with no browser connected
    python -m benchmarks.speed --full                # + time to Chamfer of the default run, grid on and off (minutes)
    python -m benchmarks.speed --dry-run             # list the cases only
    python -m benchmarks.speed encoder.compile=false # extra overrides for every case
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from benchmarks.quality import commit_id, device_name, publish, run as run_job
from systems.assembly import build_system, compose_config
from systems.config import Viewer as ViewerSettings, as_section
from systems.viewer import ViewerCallback

ROOT = Path(__file__).resolve().parents[1]


def scene(scale: int, views: int) -> list[str]:
    """Overrides of the synthetic scene at ``scale`` x 200x150 pixels with ``views`` views."""
    return [f"dataset.width={200 * scale}", f"dataset.height={150 * scale}", f"dataset.n_views={views}"]


GRID_OFF = "system.model.grid.enabled=false"
CASES = {
    "grid-on": scene(1, 25),
    "grid-off": [*scene(1, 25), GRID_OFF],
    "2x-images": scene(2, 25),
    "4x-images": scene(4, 25),
    "49-views": scene(1, 49),
    "viewer-on": [*scene(1, 25), "viewer.enabled=true"],
}


class StepTimer(pl.Callback):
    """Wall time of the training steps from ``warmup`` on, with the rays and samples of each."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = self.stopped = 0.0
        self.rays: list[float] = []
        self.samples: list[float] = []

    @staticmethod
    def _sync(module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self._sync(module)
            if module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(module.device)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if batch_idx < self.warmup:
            return
        metrics = trainer.callback_metrics
        self.rays.append(float(metrics["train/rays"]))
        self.samples.append(float(metrics["train/samples"]))
        self._sync(module)
        self.stopped = time.perf_counter()


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated by PyTorch on CUDA, else the process's peak resident set (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(overrides: list[str], steps: int, warmup: int) -> dict[str, float]:
    """Train ``warmup + steps`` steps of the configured system in this process and time the last ``steps``.

    Returns steps/s, ms/step, mean rays and samples per step, rays/s and peak memory (MiB).
    """
    cfg = compose_config(overrides)
    pl.seed_everything(cfg.seed, verbose=False)
    timer = StepTimer(warmup)
    viewer = [ViewerCallback(as_section(ViewerSettings, OmegaConf.to_container(cfg.viewer)))] if cfg.viewer.enabled else []
    with tempfile.TemporaryDirectory() as run_dir:
        system = build_system(cfg, Path(run_dir))
        trainer = pl.Trainer(max_steps=warmup + steps, accelerator=cfg.trainer.accelerator, devices=1,
                             precision=cfg.trainer.precision, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             num_sanity_val_steps=0, inference_mode=False, callbacks=[timer, *viewer])
        trainer.fit(system)
    seconds = timer.stopped - timer.started
    rays = sum(timer.rays) / len(timer.rays)
    return {"steps_per_s": steps / seconds, "ms_per_step": 1000 * seconds / steps, "rays_per_step": rays,
            "samples_per_step": sum(timer.samples) / len(timer.samples), "rays_per_s": rays * steps / seconds,
            "peak_mib": peak_memory_mib(system.device)}


def measure_in_child(overrides: list[str], steps: int, warmup: int) -> dict[str, float]:
    """:func:`measure` in a fresh Python process (its own peak memory); the result is its last output line."""
    cmd = [sys.executable, "-m", "benchmarks.speed", "--child", "--steps", str(steps), "--warmup", str(warmup), *overrides]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"case {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: dict[str, dict]) -> str:
    """Markdown table of :func:`measure` results (each with its ``overrides``)."""
    head = ("| case | steps/s | ms/step | rays/step | samples/step | rays/s | peak MiB | overrides |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [f"| {name} | {m['steps_per_s']:.2f} | {m['ms_per_step']:.0f} | {m['rays_per_step']:.0f} | "
             f"{m['samples_per_step']:.0f} | {m['rays_per_s']:.0f} | {m['peak_mib']:.0f} | `{' '.join(m['overrides'])}` |"
             for name, m in rows.items()]
    return "\n".join([head, *lines])


def viewer_cost(rows: dict[str, dict]) -> str:
    """One line: how much slower ``viewer-on`` trained than ``grid-on`` (empty unless both ran)."""
    if not {"grid-on", "viewer-on"} <= rows.keys():
        return ""
    slower = 100 * (1 - rows["viewer-on"]["steps_per_s"] / rows["grid-on"]["steps_per_s"])
    return f"\nThe viewer serving with no browser connected: {slower:.1f} % fewer steps/s than grid-on (target: at most 5 %).\n"


def chamfer_table(rows: dict[str, dict]) -> str:
    """Markdown table of full default runs: steps, training time and Chamfer."""
    head = "| default run | steps | train s | Chamfer | command |\n|---|---|---|---|---|"
    lines = [f"| {name} | {m['step']} | {m.get('train_time_s', '-')} | {m.get('chamfer', float('nan')):.3f} | `{m['command']}` |"
             for name, m in rows.items()]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=50, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--full", action="store_true", help="also time full default runs to their Chamfer, grid on and off")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / time.strftime("speed_%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/BENCHMARKS.md")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every case")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.overrides, args.steps, args.warmup)))
        return
    if args.dry_run:
        for name in args.cases:
            print(f"{name}: {' '.join([*CASES[name], *args.overrides])}")
        if args.full:
            print("full runs: python launch.py " + " ".join(args.overrides), f"(and {GRID_OFF})")
        return
    rows = {}
    for name in args.cases:
        overrides = [*CASES[name], *args.overrides]
        rows[name] = {**measure_in_child(overrides, args.steps, args.warmup), "overrides": overrides}
        print(f"{name}: {rows[name]['steps_per_s']:.2f} steps/s", flush=True)
    commit = commit_id()
    command = "python -m benchmarks.speed " + shlex.join(sys.argv[1:])
    report = (f"\n### Speed, {date.today()}, commit {commit}, {device_name()}\n\n`{command}`: {args.steps} timed "
              f"training steps per case after {args.warmup} warm-up steps.\n\n{table(rows)}\n{viewer_cost(rows)}")
    if args.full:
        runs = {"grid-on": run_job("synthetic", args.overrides, args.out / "grid_on"),
                "grid-off": run_job("synthetic", [*args.overrides, GRID_OFF], args.out / "grid_off")}
        report += f"\n{chamfer_table(runs)}\n"
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
