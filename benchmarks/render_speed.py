"""Render-speed benchmark: held-out views of a trained NeuS/VolSDF run rendered with every sample and with early ray
termination (``systems.neus.EVAL_STOP_TRANSMITTANCE``), side by side on the same machine and weights.

    python -m benchmarks.render_speed outputs/neus-dtu_scan24/<time>                 # its first 2 held-out views
    python -m benchmarks.render_speed RUN --views 2 --downscale 2 --no-append        # half resolution, print only

Prints one table (seconds per view, samples evaluated per ray, PSNR of each against the image, the largest
difference between the two renders) and appends it to docs/BENCHMARKS.md unless ``--no-append``.
"""
from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import torch

import systems.neus
from benchmarks.quality import commit_id, device_name, publish
from models.metrics import psnr
from systems.assembly import load_run

ROOT = Path(__file__).resolve().parents[1]


def render(system, view: int, stop_transmittance: float) -> tuple[dict[str, torch.Tensor], float, float]:
    """Render held-out ``view`` with ``stop_transmittance`` (0: every sample): outputs, seconds, samples per ray."""
    counted: list[int] = []
    model_render = system.model.render

    def counting(*args, **kwargs):
        out = model_render(*args, **kwargs)
        counted.append(int(out["n_samples"]))
        return out

    system.model.render, default = counting, systems.neus.EVAL_STOP_TRANSMITTANCE
    systems.neus.EVAL_STOP_TRANSMITTANCE = stop_transmittance
    try:
        started = time.perf_counter()
        out = system.render_view(view)
        seconds = time.perf_counter() - started
    finally:
        del system.model.render
        systems.neus.EVAL_STOP_TRANSMITTANCE = default
    return out, seconds, sum(counted) / out["opacity"].numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished NeuS or VolSDF run directory (or checkpoint)")
    parser.add_argument("--views", type=int, default=2, help="how many of its held-out views")
    parser.add_argument("--downscale", type=int, default=None, help="render at 1/N resolution (default: the run's own)")
    parser.add_argument("--no-append", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    system = load_run(args.run)
    if args.downscale:
        system.eval_downscale = args.downscale
    stop = systems.neus.EVAL_STOP_TRANSMITTANCE
    rows = []
    for view in system.scene.test_ids[: args.views]:
        image, mask = system.view_targets(view)
        full, full_s, full_spr = render(system, view, 0.0)
        marched, marched_s, marched_spr = render(system, view, stop)
        h, w = full["opacity"].shape
        rows.append(f"| {system.scene.view_label(view)} | {w}×{h} | {full_s:.1f} | {marched_s:.1f} | {full_s / marched_s:.2f}× | "
                    f"{full_spr:.0f} | {marched_spr:.0f} | {psnr(full['rgb'], image):.2f} | {psnr(marched['rgb'], image):.2f} | "
                    f"{float((full['rgb'] - marched['rgb']).abs().max()):.1e} |")
    commit = commit_id()
    report = (f"\n### Held-out render speed, {date.today()}, commit {commit}, {device_name()}\n\n"
              f"`python -m benchmarks.render_speed {args.run}` ({type(system).__name__}; early termination below "
              f"transmittance {stop:g})\n\n"
              "| view | size | s, every sample | s, early termination | speed-up | samples/ray, every | samples/ray, early | "
              "PSNR, every | PSNR, early | max abs. diff. |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
