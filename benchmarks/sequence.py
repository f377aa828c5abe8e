"""Dynamic-scene benchmark: a synthetic sequence trained frame by frame, with and without the global-motion
phase, against every frame trained from scratch at the same per-frame budget; one table per frame and a
summary, appended to docs/BENCHMARKS.md.

    python -m benchmarks.sequence                       # the three runs of experiment=sequence-cpu (~20 min each on 2 cores)
    python -m benchmarks.sequence --jobs motion         # one of them
    python -m benchmarks.sequence dataset.n_frames=5    # extra overrides for every run
"""
from __future__ import annotations

import argparse
import csv
import time
from datetime import date
from pathlib import Path

from benchmarks.quality import commit_id, device_name, launch, publish
from systems.assembly import compose_config

ROOT = Path(__file__).resolve().parents[1]


def jobs(overrides: list[str]) -> dict[str, list[str]]:
    """The runs: warm start with and without the motion phase, and from scratch with the per-frame budget
    of a warm-started frame (its field and motion steps together)."""
    s = compose_config(["experiment=sequence-cpu", *overrides]).sequence
    budget = s.next_frame_steps + s.global_motion_steps
    return {
        "motion": ["experiment=sequence-cpu"],
        "no-motion": ["experiment=sequence-cpu", "sequence.global_motion_steps=0", f"sequence.next_frame_steps={budget}"],
        "scratch": ["experiment=sequence-cpu", "sequence.warm_start=false", f"sequence.first_frame_steps={budget}"],
    }


def frame_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "frames.csv") as f:
        return list(csv.DictReader(f))


def report(results: dict[str, dict], frames: dict[str, list[dict[str, str]]]) -> str:
    """Markdown: a summary row per run and a per-frame Chamfer table, with each frame's ratio to the from-scratch run."""
    head = ("| run | frames | steps | wall s | Chamfer mean | Chamfer max | PSNR mean | IoU mean | command |\n"
            "|---|---|---|---|---|---|---|---|---|")
    fmt = lambda m, k, f: format(m[k], f) if k in m else "-"  # noqa: E731
    lines = [f"| {n} | {m['n_frames']} | {m['steps']} | {m['wall_s']} | {fmt(m, 'chamfer_mean', '.3f')} | {fmt(m, 'chamfer_max', '.3f')} | "
             f"{fmt(m, 'psnr_mean', '.2f')} | {fmt(m, 'iou_mean', '.4f')} | `{m['command']}` |" for n, m in results.items()]
    names = list(frames)
    per_frame = ["| frame | " + " | ".join(f"{n} Chamfer" for n in names) + " | " +
                 " | ".join(f"{n} / scratch" for n in names if n != "scratch" and "scratch" in frames) +
                 " | motion rot. err. ° | motion transl. err. |",
                 "|---" * (1 + len(names) + sum(n != "scratch" for n in names if "scratch" in frames) + 2) + "|"]
    for i in range(max(len(r) for r in frames.values())):
        row = {n: frames[n][i] for n in names if i < len(frames[n])}
        cells = [f"{float(row[n]['chamfer']):.3f}" if n in row and row[n].get("chamfer") else "-" for n in names]
        ratios = [f"{float(row[n]['chamfer']) / float(row['scratch']['chamfer']):.2f}" if n in row and "scratch" in row else "-"
                  for n in names if n != "scratch" and "scratch" in frames]
        motion = row.get("motion", {})
        per_frame.append(f"| {i} | " + " | ".join(cells + ratios) + f" | {motion.get('motion_rotation_error_deg', '-')[:5]} | "
                         f"{motion.get('motion_translation_error', '-')[:6]} |")
    return "\n".join([head, *lines, "", *per_frame])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=["motion", "no-motion", "scratch"], choices=["motion", "no-motion", "scratch"])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/BENCHMARKS.md")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()
    runs = {name: [*overrides, *args.overrides] for name, overrides in jobs(args.overrides).items() if name in args.jobs}
    if args.dry_run:
        for overrides in runs.values():
            print("python launch.py " + " ".join(overrides))
        return
    results = {name: launch(overrides, args.out / name) for name, overrides in runs.items()}
    frames = {name: frame_rows(args.out / name) for name in runs}
    commit = commit_id()
    publish(f"\n### Dynamic scenes, {date.today()}, commit {commit}, {device_name()}\n\n{report(results, frames)}\n",
            append=not args.no_append)


if __name__ == "__main__":
    main()
