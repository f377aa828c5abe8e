"""One table of a sweep: every job's overrides and metrics, as markdown and CSV.

    python -m tools.summarize multirun/2026-12-03_10-00-00 [--metrics chamfer,psnr,iou]

Reads each job folder's ``.hydra/overrides.yaml`` and ``metrics.json``; overrides shared by every
job are printed once above the table, those that vary get a column each; the lines of
``failed_jobs.txt`` (jobs that stopped on an error) follow the table. Writes ``summary.md`` and
``summary.csv`` into the sweep folder (atomically) and prints the markdown. A sweep run through
``launch.py -m`` writes them itself when it ends (:class:`SweepSummary`).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from datasets.errors import InputError
from systems.mesh_io import atomic_write

# Metrics shown first, in this order, when a job has them; any other number follows.
PREFERRED = ("chamfer", "accuracy", "completeness", "psnr", "iou", "step", "train_time_s")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each job folder of ``sweep_dir`` (numeric order): {"job", "overrides" {key: value}, "metrics" {...} or None}."""
    if not sweep_dir.is_dir():
        raise InputError(sweep_dir, "sweep folder not found")
    jobs = []
    folders = [p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    for folder in sorted(folders, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
        pairs = dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides)
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        jobs.append({"job": folder.name, "overrides": pairs, "metrics": metrics})
    if not jobs:
        raise InputError(sweep_dir, "no job folders (with .hydra/overrides.yaml) in this folder")
    return jobs


def summary_table(jobs: list[dict[str, Any]], metrics: list[str] | None = None) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """(header, rows, shared overrides) of ``jobs`` from :func:`read_jobs`; ``metrics`` None: every numeric one."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    varying = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]
    shared = {k: jobs[0]["overrides"][k] for k in keys if k not in varying}
    if metrics is None:
        numeric = {k for job in jobs for k, v in (job["metrics"] or {}).items() if isinstance(v, (int, float))}
        metrics = [k for k in PREFERRED if k in numeric] + sorted(numeric - set(PREFERRED))
    rows = []
    for job in jobs:
        values = job["metrics"]
        cells = [_format(values.get(k)) for k in metrics] if values is not None else ["-"] * len(metrics)
        status = "done" if values is not None else "no metrics.json"
        rows.append([job["job"], *(job["overrides"].get(k, "") for k in varying), *cells, status])
    return ["job", *varying, *metrics, "status"], rows, shared


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(header: list[str], rows: list[list[str]], shared: dict[str, str]) -> str:
    lines = []
    if shared:
        lines += ["Every job: " + " ".join(f"`{k}={v}`" for k, v in shared.items()), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def summarize(sweep_dir: str | Path, metrics: list[str] | None = None) -> str:
    """Write ``summary.md`` and ``summary.csv`` of a sweep into its folder; returns the markdown."""
    sweep_dir = Path(sweep_dir)
    header, rows, shared = summary_table(read_jobs(sweep_dir), metrics)
    markdown = to_markdown(header, rows, shared)
    failed = sweep_dir / "failed_jobs.txt"  # launch.py's one line per failed job
    if failed.is_file():
        markdown += "\nFailed jobs:\n\n" + "".join(f"- {line}\n" for line in failed.read_text().splitlines())
    atomic_write(sweep_dir / "summary.md", markdown.encode())
    atomic_write(sweep_dir / "summary.csv", to_csv(header, rows).encode())
    return markdown


class SweepSummary(Callback):
    """Hydra callback: writes the sweep's summary when a ``-m`` sweep ends (configs/config.yaml)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            print(summarize(config.hydra.sweep.dir))
        except InputError as err:  # e.g. every job refused its input before writing anything
            print(f"no sweep summary: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun folder (multirun/TIME or hydra.sweep.dir)")
    parser.add_argument("--metrics", help="comma-separated metric columns (default: every number in metrics.json)")
    args = parser.parse_args(argv)
    try:
        print(summarize(args.sweep_dir, args.metrics.split(",") if args.metrics else None), end="")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
