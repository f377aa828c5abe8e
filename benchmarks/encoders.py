"""Encoder comparison at equal wall time: one Hydra multirun over encoders per scene, one table,
appended to docs/BENCHMARKS.md.

    python -m benchmarks.encoders                          # synthetic scene, 5 training minutes per encoder
    python -m benchmarks.encoders --dtu                    # + DTU scan24 (held-out PSNR and IoU), 10 minutes each
    python -m benchmarks.encoders --encoders hashgrid nffb --minutes 2
    python -m benchmarks.encoders --dry-run                # print the commands only
    python -m benchmarks.encoders system.optim.decay_steps=1500   # extra overrides go to every job

Every job trains for ``trainer.max_time`` with a step limit that never binds, so faster encoders
take more steps. Learning-rate decay and progressive levels follow steps (decay over
``trainer.max_steps`` unless ``system.optim.decay_steps`` is given). Encoder overrides
(``encoder.KEY=...``) must exist in every compared encoder's config. Parameters are counted by
instantiating each job's saved encoder config; it/s is steps / train_time_s of its metrics.json
(training time includes setup, validation and any torch.compile compilation).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import yaml

from benchmarks.quality import commit_id, device_name, publish

ROOT = Path(__file__).resolve().parents[1]

ENCODERS = ["frequency", "hashgrid", "nffb", "stylemod_nffb"]
SCENES = {
    "synthetic": [],
    "dtu24": ["dataset=dtu", "scan=24", f"data_dir={ROOT.parent / 'shared' / 'data'}", "system.eval_downscale=2"],
}


def max_time(minutes: float) -> str:
    """Lightning's DD:HH:MM:SS for a budget in minutes."""
    seconds = max(1, round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def command(scene: str, encoders: list[str], minutes: float, max_steps: int, overrides: list[str], sweep_dir: Path) -> list[str]:
    return ["launch.py", "-m", f"encoder={','.join(encoders)}", *SCENES[scene], f"trainer.max_time={max_time(minutes)}",
            f"trainer.max_steps={max_steps}", *overrides, f"hydra.sweep.dir={sweep_dir}"]


def encoder_parameters(job_dir: Path) -> int:
    """Parameter count of the encoder a job trained, rebuilt from its saved config."""
    from omegaconf import OmegaConf

    from systems.trust import build

    encoder = build(OmegaConf.load(job_dir / ".hydra" / "config.yaml").encoder, origin=str(job_dir / ".hydra" / "config.yaml"))
    return sum(p.numel() for p in encoder.parameters())


def collect(sweep_dir: Path) -> dict[str, dict]:
    """{encoder: metrics (+ 'params')} of the finished jobs of a multirun."""
    results = {}
    for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()):
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
        name = next(o.split("=", 1)[1] for o in overrides if o.startswith("encoder="))
        metrics_file = job_dir / "metrics.json"
        if metrics_file.is_file():
            results[name] = {**json.loads(metrics_file.read_text()), "params": encoder_parameters(job_dir)}
    return results


def table(encoders: list[str], results: dict[str, dict[str, dict]]) -> str:
    """One row per encoder: parameters, then steps and it/s of each scene, Chamfer (synthetic), PSNR and IoU (DTU)."""
    synthetic, dtu = results.get("synthetic", {}), results.get("dtu24", {})

    def fmt(metrics: dict | None, key: str, spec: str) -> str:
        if metrics is not None and key == "it/s" and "train_time_s" in metrics:
            return format(metrics["step"] / max(metrics["train_time_s"], 1e-9), spec)
        return "-" if metrics is None or key not in metrics else format(metrics[key], spec)

    head = ("| encoder | params | synthetic steps | synthetic it/s | Chamfer | DTU steps | DTU it/s | DTU PSNR | DTU IoU |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = []
    for name in encoders:
        s, d = synthetic.get(name), dtu.get(name)
        params = (s or d or {}).get("params")
        lines.append(f"| {name} | {'failed' if params is None else f'{params:,}'} | {fmt(s, 'step', 'd')} | {fmt(s, 'it/s', '.2f')} | "
                     f"{fmt(s, 'chamfer', '.3f')} | {fmt(d, 'step', 'd')} | {fmt(d, 'it/s', '.2f')} | {fmt(d, 'psnr', '.2f')} | "
                     f"{fmt(d, 'iou', '.4f')} |")
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=ENCODERS, help="encoder configs to compare")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget per encoder on the synthetic scene")
    parser.add_argument("--dtu", action="store_true", help="add DTU scan24 (held-out PSNR and IoU)")
    parser.add_argument("--dtu-minutes", type=float, default=10.0, help="training budget per encoder on DTU")
    parser.add_argument("--max-steps", type=int, default=1_000_000, help="step limit (large: the time budget binds)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / f"encoders_{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/BENCHMARKS.md")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every job")
    args = parser.parse_args()
    budgets = {"synthetic": args.minutes, **({"dtu24": args.dtu_minutes} if args.dtu else {})}
    commands = {scene: command(scene, args.encoders, minutes, args.max_steps, args.overrides, args.out / scene)
                for scene, minutes in budgets.items()}
    if args.dry_run:
        for cmd in commands.values():
            print("python " + " ".join(cmd))
        return
    results = {}
    for scene, cmd in commands.items():
        run = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"warning: the {scene} multirun failed (exit {run.returncode}):\n{run.stderr[-2000:]}", file=sys.stderr)
        results[scene] = collect(args.out / scene) if (args.out / scene).is_dir() else {}
    if not any(results.values()):
        raise SystemExit("no job finished")
    commit = commit_id()
    budget = ", ".join(f"{scene} {minutes:g} min" for scene, minutes in budgets.items())
    commands_md = "\n".join(f"- `python {' '.join(c for c in cmd if not c.startswith('hydra.sweep.dir='))}`" for cmd in commands.values())
    report = (f"\n### Encoders, {date.today()}, commit {commit}, {device_name()}\n\nTraining budget per encoder: {budget}.\n\n"
              f"{table(args.encoders, results)}\n\nCommands:\n\n{commands_md}\n")
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
