"""Train, evaluate or export a surface reconstruction.

    python launch.py                                        # NeuS on the embedded synthetic scene
    python launch.py dataset=dtu scan=24 data_dir=../shared/data
    python launch.py -m encoder=hashgrid,frequency          # a sweep
    python launch.py resume=outputs/neus-synthetic_sphere_torus/<time>   # continue a killed run
    python launch.py resume=<run dir> mode=test             # re-export and re-evaluate
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from core.errors import InputError
from systems import modes
from systems.assembly import CONFIG_DIR, check_config, check_group_choices, compose_config, objective_value, summary
from systems.callbacks import resume_hint
from systems.config import register_configs
from systems.config_doc import job_config_request, job_config_text
from systems.quiet import quiet_libraries
from systems.trust import check_saved_overrides, read_saved_overrides, trust_command_line
from systems.sweep import FAILED_JOBS_FILE, failed_jobs, record_job
from systems.run_dir import (HYDRA_ENTRIES, adopt, check_new_run_dir, claim, find_checkpoint, folder_state, own_checkpoint,
                             remove_created)

log = logging.getLogger("launch")
# What each mode does (systems/modes.py); each handler returns the job's metrics.
HANDLERS = {"train": modes.fit, "test": modes.fit, "eval": modes.fit, "export": modes.export, "inspect_init": modes.inspect_initial,
            "transfer": modes.transfer, "video": modes.video, "view": modes.view}


@dataclass
class Start:
    """What :func:`prepare_argv` found before Hydra started."""

    run_dir_existed: bool | None = None  # whether an explicit hydra.run.dir existed before this process
    run_dir_before: set[str] | None = None  # the names it held before it was claimed (None: Hydra made it, the job claims it)
    sweep_dir: Path | None = None  # a sweep's folder; its failed jobs have a line each in failed_jobs.txt (systems/sweep.py)


def _arg(argv: list[str], key: str) -> str | None:
    """Value of the last ``key=value`` command-line override, if any."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")]
    return values[-1] if values else None


def prepare_argv(argv: list[str]) -> tuple[list[str], Start]:
    """Rewrite the command line before Hydra sees it.

    ``resume=PATH`` re-applies the run's saved overrides (new ones win; a ``_target_`` in them must pass
    systems/trust.py) and points ``hydra.run.dir`` at the run. Without it, ``hydra.run.dir`` (named here when
    not given) or ``hydra.sweep.dir`` is refused unless it is new or empty, so no run and no user file is ever
    overwritten, and a single run claims its folder (systems/run_dir.py ``claim``) before Hydra writes into it.
    """
    args, start = argv[1:], Start()
    if (job := job_config_request(args)) is not None:  # --cfg job, with each documented key's comment (systems/config_doc.py)
        check_group_choices(job.overrides)
        check_config(job.overrides)
        print(job_config_text(CONFIG_DIR, job), end="")
        sys.exit(0)
    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc") for a in args):
        return argv, start  # Hydra's own commands
    if ddp_child():  # rank 0 checked this command line and made the run directory; log to the console, not to a file there
        return [argv[0], *[a for a in args if not a.startswith("hydra/job_logging=")], "hydra/job_logging=stdout"], start
    check_group_choices(args)
    multirun = "-m" in args or "--multirun" in args
    resume = _arg(args, "resume")
    if resume and resume not in ("null", "auto") and not multirun:
        run_dir, _ = find_checkpoint(resume)
        saved_file = run_dir / ".hydra" / "overrides.yaml"
        saved = read_saved_overrides(saved_file)
        given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
        skip = given | {"resume", "mode", "hydra.run.dir", "trust_run_targets"}  # a run cannot trust itself
        kept = [a for a in saved if a.split("=", 1)[0].lstrip("+~") not in skip]
        trust_command_line(args, _arg(args, "trust_run_targets") == "true")
        check_saved_overrides(kept, origin=str(saved_file))
        check_config([*kept, *args])
        return [argv[0], *kept, *args, f"hydra.run.dir={run_dir}"], start
    check_config(args)
    run_dir = _arg(args, "hydra.run.dir")
    if not run_dir and not multirun and resume != "auto":  # fixed here (as configs/config.yaml would name it), to be claimed
        run_dir = f"outputs/{compose_config([a for a in args if not a.startswith('hydra')]).name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        argv = [*argv, f"hydra.run.dir={run_dir}"]
    if run_dir and not multirun and not (resume == "auto" and folder_state(Path(run_dir)) in ("run", "started")):
        check_new_run_dir(Path(run_dir))
        start.run_dir_existed = Path(run_dir).exists()
        start.run_dir_before = {p.name for p in Path(run_dir).iterdir()} if start.run_dir_existed else set()
        claim(Path(run_dir))  # first, atomically: a second run started into it now is refused
    sweep_dir = _arg(args, "hydra.sweep.dir")
    if sweep_dir and multirun and folder_state(Path(sweep_dir)) not in ("absent", "empty") and not (
            resume == "auto" and (Path(sweep_dir) / "multirun.yaml").is_file()):  # resume=auto re-runs a sweep of ours
        raise InputError(sweep_dir, "sweep directory is not empty; choose a new hydra.sweep.dir")
    if multirun:
        if not sweep_dir:  # fixed here (as configs/config.yaml would name it) so that this process knows it
            sweep_dir = f"multirun/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
            argv = [*argv, f"hydra.sweep.dir={sweep_dir}"]
        start.sweep_dir = Path(sweep_dir)
    return argv, start


def ddp_child() -> bool:
    """Whether this process is one of the copies of the command (ranks > 0) that Lightning's DDP launcher
    starts with ``LOCAL_RANK``/``NODE_RANK`` set and ``hydra.run.dir`` pointing at rank 0's run directory."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Do what ``cfg.mode`` says (:data:`HANDLERS`) in ``run_dir``; returns the metrics."""
    if cfg.mode not in HANDLERS:
        raise InputError("mode", f"unknown value {cfg.mode!r}; choose one of {', '.join(HANDLERS)}")
    pl.seed_everything(cfg.seed, verbose=False)
    return HANDLERS[cfg.mode](cfg, run_dir)


def fail(line: str, code: int) -> None:
    """Report a failed job in one line: exit with ``code``, or in a sweep, record it in the sweep's
    ``failed_jobs.txt`` (the job's line, replaced when a re-run sweep fails again) and let the sweep go on."""
    print(line, file=sys.stderr)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        sys.exit(code)
    record_job(hydra_cfg.sweep.dir, hydra_cfg.job.num, line)


def job(cfg: DictConfig, start: Start) -> float | None:
    """One Hydra job of the command line: claim its run directory, run it, report it; returns the sweep's objective."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    auto = cfg.resume == "auto"
    if auto:  # continue this run directory when it holds a checkpoint (a requeued or re-run job), else start it
        cfg.resume = own_checkpoint(run_dir)
    fresh = not cfg.resume
    child = ddp_child()  # in rank 0's run directory, which it checked
    trust_command_line(HydraConfig.get().overrides.task, cfg.trust_run_targets)
    kept = start.run_dir_before  # what a failed start leaves: None unless this process claimed run_dir
    try:
        if fresh and not auto and kept is None and not child:  # Hydra made the folder: claim it, unless taken
            if {p.name for p in run_dir.iterdir()} - HYDRA_ENTRIES:
                raise InputError(run_dir, "run directory already holds files; pass resume=DIR to continue a run or choose a new one")
            claim(run_dir)
            kept = set()
        elif not child and kept is None:
            adopt(run_dir)  # a resumed run made before the marker
        if HydraConfig.get().mode == RunMode.MULTIRUN and (cfg.trainer.devices != 1 or cfg.trainer.num_nodes != 1):
            raise InputError("trainer.devices", "a -m sweep runs each job on one device (DDP re-runs the command line)")
        if HydraConfig.get().mode == RunMode.MULTIRUN and (cfg.viewer.enabled or cfg.mode == "view"):
            raise InputError("viewer.enabled" if cfg.viewer.enabled else "mode", "the viewer shows one run; start it without -m")
        metrics = run(cfg, run_dir)
    except InputError as err:
        if fresh and kept is not None and not child and not any((run_dir / name).exists() for name in ("checkpoints", "frames")):
            remove_created(run_dir, kept, remove_folder=not start.run_dir_existed)
        fail(f"error: {err}", 2)
        return objective_value(cfg, None)
    except SIGTERMException:  # Lightning's, raised at the end of the step in which the signal came
        print(resume_hint(run_dir, cfg.mode), file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        log.exception("job failed")
        fail(f"error: {run_dir}: {type(err).__name__}: {err}", 1)
        return objective_value(cfg, None)
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a re-run sweep's job that now finished is no longer a failure
        record_job(HydraConfig.get().sweep.dir, HydraConfig.get().job.num, None)
    if not child:
        print(summary(cfg, run_dir, metrics))
    return objective_value(cfg, metrics)


def main() -> None:
    """The entry point: check and rewrite the command line, then run its job(s) under Hydra."""
    register_configs()
    quiet_libraries()
    try:
        sys.argv, start = prepare_argv(sys.argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    hydra.main(config_path="configs", config_name="config", version_base="1.3")(lambda cfg: job(cfg, start))()
    n_failed = len(failed_jobs(start.sweep_dir)) if start.sweep_dir is not None else 0
    if n_failed:
        print(f"error: {n_failed} job(s) of the sweep failed (listed in {start.sweep_dir / FAILED_JOBS_FILE}); the others finished",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
