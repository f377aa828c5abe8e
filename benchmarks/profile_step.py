"""Profile training steps with torch.profiler: where one step of a system spends its time.

Builds the system as launch.py does (``systems.assembly.compose_config`` with the given overrides),
trains ``--warmup`` untimed steps (torch.compile, grid warm-up and the adaptive ray count settle
there), then profiles ``--steps`` steps and prints the operators with the most self CPU time, as a
markdown table (share of the profiled time, calls, and ms per step).

    python -m benchmarks.profile_step                          # NeuS, the default scene
    python -m benchmarks.profile_step system=idr               # IDR
    python -m benchmarks.profile_step --top 25 --steps 10 encoder=frequency
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytorch_lightning as pl
from torch.profiler import ProfilerActivity, profile

from systems.assembly import build_system, compose_config

ROOT = Path(__file__).resolve().parents[1]


class ProfileSteps(pl.Callback):
    """Starts torch.profiler at training step ``warmup`` and stops it after the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=False)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.profiler.__enter__()

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.profiler.__exit__(None, None, None)


def profile_steps(overrides: list[str], steps: int, warmup: int) -> list[dict]:
    """Operators of ``steps`` profiled training steps: name, self CPU ms per step, calls per step, share."""
    cfg = compose_config(overrides)
    pl.seed_everything(cfg.seed, verbose=False)
    callback = ProfileSteps(warmup)
    with tempfile.TemporaryDirectory() as run_dir:
        system = build_system(cfg, Path(run_dir))
        trainer = pl.Trainer(max_steps=warmup + steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                             inference_mode=False, callbacks=[callback])
        trainer.fit(system)
    events = callback.profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [{"name": e.key, "ms_per_step": e.self_cpu_time_total / 1000 / steps, "calls_per_step": e.count / steps,
             "share": e.self_cpu_time_total / total} for e in events]
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def table(rows: list[dict], top: int) -> str:
    """Markdown table of the ``top`` operators, and the step total."""
    total = sum(r["ms_per_step"] for r in rows)
    lines = ["| operator | self CPU ms/step | share | calls/step |", "|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {r['ms_per_step']:.1f} | {100 * r['share']:.1f} % | {r['calls_per_step']:.0f} |" for r in rows[:top]]
    lines.append(f"| all operators | {total:.0f} | 100 % | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--top", type=int, default=20, help="operators listed")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for launch.py")
    args = parser.parse_args()
    print(table(profile_steps(args.overrides, args.steps, args.warmup), args.top))


if __name__ == "__main__":
    main()
