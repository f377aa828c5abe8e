"""One table of a sweep: every job's overrides and metrics, as markdown and CSV.

    python -m tools.summarize multirun/2026-12-03_10-00-00 [--metrics chamfer,psnr,iou]

Reads each job folder's ``.hydra/overrides.yaml`` and ``metrics.json``; overrides shared by every
job are printed once above the table, those that vary (or that the sweep's ``multirun.yaml`` sweeps)
get a column each. Jobs listed in ``failed_jobs.txt`` have the status ``failed`` (a row of their own
when they left no folder), and their lines follow the table. Writes ``summary.md`` and
``summary.csv`` into the sweep folder (atomically) and prints the markdown; with ``--metrics`` it
only prints (the full summary files stay). A sweep run through ``launch.py -m`` writes them itself
when it ends (:class:`SweepSummary`).
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
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core.errors import InputError
from core.io import atomic_write
from systems.sweep import failed_jobs

# Metrics shown first, in this order, when a job has them; any other number follows.
PREFERRED = ("chamfer", "accuracy", "completeness", "psnr", "iou", "step", "train_time_s")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each job of ``sweep_dir`` (numeric order): {"job", "overrides" {key: value}, "metrics" {...} or None,
    "failed" bool}: its folder's, or for a failed job that left no folder, no overrides."""
    if not sweep_dir.is_dir():
        raise InputError(sweep_dir, "sweep folder not found")
    failed = failed_jobs(sweep_dir)
    jobs = []
    folders = {p.name: p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()}
    folders.update({str(num): None for num in failed if str(num) not in folders})
    for name in sorted(folders, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)):
        folder = folders[name]
        overrides = (yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []) if folder else []
        pairs = dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides)
        metrics_path = folder / "metrics.json" if folder else None
        metrics = json.loads(metrics_path.read_text()) if metrics_path and metrics_path.is_file() else None
        jobs.append({"job": name, "overrides": pairs, "metrics": metrics, "failed": name.isdigit() and int(name) in failed})
    if not jobs:
        raise InputError(sweep_dir, "no job folders (with .hydra/overrides.yaml) in this folder")
    return jobs


def swept_keys(sweep_dir: Path) -> set[str]:
    """The keys the sweep's command line swept (``a=1,2``, ``range(...)``), from its ``multirun.yaml``; empty without one."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return set()
    task = ((yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("overrides", {}) or {}).get("task") or []
    return {o.get_key_element() for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()}


def summary_table(jobs: list[dict[str, Any]], metrics: list[str] | None = None,
                  swept: set[str] = frozenset()) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """(header, rows, shared overrides) of ``jobs`` from :func:`read_jobs`; ``metrics`` None: every numeric one.
    A key varies when its value differs between jobs or it is in ``swept``; failed jobs without overrides
    do not count as differing."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    known = [job for job in jobs if job["overrides"]]
    varying = [k for k in keys if k in swept or len({job["overrides"].get(k) for job in known}) > 1]
    shared = {k: known[0]["overrides"][k] for k in keys if k not in varying}
    if metrics is None:
        numeric = {k for job in jobs for k, v in (job["metrics"] or {}).items() if isinstance(v, (int, float))}
        metrics = [k for k in PREFERRED if k in numeric] + sorted(numeric - set(PREFERRED))
    rows = []
    for job in jobs:
        values = job["metrics"]
        cells = [_format(values.get(k)) for k in metrics] if values is not None else ["-"] * len(metrics)
        status = "failed" if job["failed"] else "done" if values is not None else "no metrics.json"
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


def summarize(sweep_dir: str | Path, metrics: list[str] | None = None, write: bool = True) -> str:
    """The markdown summary of a sweep; ``write``: also into ``summary.md`` and ``summary.csv`` in its folder."""
    sweep_dir = Path(sweep_dir)
    header, rows, shared = summary_table(read_jobs(sweep_dir), metrics, swept_keys(sweep_dir))
    markdown = to_markdown(header, rows, shared)
    failed = failed_jobs(sweep_dir)  # launch.py's one line per failed job
    if failed:
        markdown += "\nFailed jobs:\n\n" + "".join(f"- {failed[num]}\n" for num in sorted(failed))
    if write:
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
    parser.add_argument("--metrics", help="comma-separated metric columns, printed only (default: every number in "
                                          "metrics.json, also written to summary.md and summary.csv)")
    args = parser.parse_args(argv)
    try:
        metrics = args.metrics.split(",") if args.metrics else None
        print(summarize(args.sweep_dir, metrics, write=metrics is None), end="")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
