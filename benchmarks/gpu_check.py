"""One command for the first GPU: install and build the optional GPU extras, run the CUDA-only tests, check
every accelerated backend against the pure-PyTorch path, time training steps, and train DTU scan24 on the
GPU recipe to held-out IoU >= 0.98; one dated section naming the device goes to docs/BENCHMARKS.md.

    python -m benchmarks.gpu_check                  # on a CUDA machine: every stage (under 8 minutes on one H100/H200)
    python -m benchmarks.gpu_check --dry-run        # the plan: each stage and what it runs
    python -m benchmarks.gpu_check --smoke          # every stage on tiny sizes on the CPU, CUDA-only parts skipped
    python -m benchmarks.gpu_check --stages backends speed --no-append

Stages, in order (a failing stage is reported in the section and the next one runs):

- extras: ``pip install nerfacc==0.5.3`` (from the package index) and a first nerfacc CUDA call, which
  JIT-builds its extension (needs nvcc; a few minutes, cached in TORCH_EXTENSIONS_DIR); triton's version
  (CUDA builds of PyTorch ship it); tiny-cuda-nn, which is not on the index, is only reported.
- tests: pytest on the test files whose tests skip without CUDA (skips are listed).
- backends: max |difference| to the PyTorch path of outputs and gradients: hash grid (fused Triton kernel,
  tiny-cuda-nn), occupancy grid marching and compositing weights (nerfacc).
- speed: ``benchmarks/speed.py``'s step timing of the synthetic scene with the GPU recipe's encoder, grid on
  and off, ``trainer.precision=32-true`` and ``16-mixed``; then ``benchmarks/fused_hashgrid.py``'s encoder table.
- train: ``python launch.py experiment=dtu-neus-gpu`` (configs/experiment/dtu-neus-gpu.yaml); train time,
  held-out PSNR/IoU, and the step and time at which the validation IoU first reaches 0.98.

``--smoke`` runs the same code on the CPU at tiny sizes (the fused kernel under Triton's interpreter, the
synthetic scene instead of DTU, tests collected but not run, nothing installed) and never writes
docs/BENCHMARKS.md; tests/benchmarks/test_gpu_check.py runs it in CI so that this command cannot rot.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

if not torch.cuda.is_available():  # before triton's kernels are defined: the fused kernel runs interpreted
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "sdfrecon_torch_extensions"))

from benchmarks import speed  # noqa: E402
from benchmarks.quality import commit_id, device_name, launch, publish  # noqa: E402
from core.geometry import RayBundle  # noqa: E402
from models.encoders import HashGridEncoder  # noqa: E402
from models.encoders.fused_hashgrid import fused_available, fused_hash_encode  # noqa: E402
from models.encoders.hashgrid import level_growth  # noqa: E402
from models.encoders.tcnn import INSTALL_HINT, TcnnHashGrid, import_tcnn  # noqa: E402
from models.renderers import packed_weights  # noqa: E402
from models.samplers import NerfaccOccupancyGrid, OccupancyGrid, nerfacc_or_none  # noqa: E402

STAGES = ("extras", "tests", "backends", "speed", "train")
INDEX_EXTRAS = ("nerfacc==0.5.3",)
CUDA_TESTS = ("tests/models/encoders/test_fused_hashgrid.py", "tests/models/encoders/test_tcnn.py",
              "tests/models/test_renderers.py", "tests/models/test_samplers.py")
IOU_TARGET = 0.98
BUDGET_S = 480  # the whole command on one H100/H200; training gets what the stages before it left
EVAL_S = 60  # launch.py's start, mesh export and held-out renders around the training
RECIPE_MAX_TIME_S = 120  # trainer.max_time of configs/experiment/dtu-neus-gpu.yaml
# The GPU recipe's encoder (configs/experiment/dtu-neus-gpu.yaml), torch.compile off as there.
GPU_ENCODER = ["encoder.n_levels=16", "encoder.log2_table_size=19", "encoder.finest_resolution=2048", "encoder.compile=false"]
SMOKE_SCENE = ["dataset.n_views=4", "dataset.width=32", "dataset.height=24", "encoder=frequency",
               "system.model.grid.resolution=16", "system.rays.initial=64", "system.rays.target_samples=2048",
               "system.loss.eikonal_points=64", "trainer.accelerator=cpu"]
SMOKE_TRAIN = ["dataset.n_views=8", "dataset.width=64", "dataset.height=48", "dataset.test_every=4",
               "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.checkpoint_every_n_steps=3",
               "trainer.log_every_n_steps=1", "export.resolution=32", "eval.chamfer_points=5000",
               "system.rays.initial=128", "system.rays.target_samples=4096", "system.model.grid.resolution=32",
               "encoder=frequency", "trainer.accelerator=cpu"]


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` in the repository root, output captured; a timeout becomes exit status 124."""
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        return subprocess.CompletedProcess(cmd, 124, error.stdout or "", f"timed out after {timeout:.0f} s")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def stage_extras(cuda: bool, smoke: bool) -> str:
    """Install the extras of the package index, build nerfacc's CUDA extension, report triton and tcnn."""
    lines = []
    for requirement in INDEX_EXTRAS:
        name, _, version = requirement.partition("==")
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed == version or smoke:
            lines.append(f"- `{requirement}`: " + ("already installed" if installed == version else
                                                   f"smoke run, not installed (installed: {installed})"))
            continue
        result = run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement], 600)
        lines.append(f"- `pip install {requirement}`: " + ("ok" if result.returncode == 0 else
                                                            f"failed: {last_line(result.stderr)}"))
    nerfacc_or_none.cache_clear()  # nerfacc may have been installed just now
    nerfacc = nerfacc_or_none()
    if nerfacc is None:
        lines.append("- nerfacc: does not import")
    elif not cuda:
        lines.append(f"- nerfacc {nerfacc.__version__}: imports; its CUDA extension: skipped (needs CUDA)")
    else:
        started = time.time()
        try:  # the first CUDA op JIT-compiles the extension
            nerfacc.ray_aabb_intersect(torch.zeros(1, 3, device="cuda"), torch.ones(1, 3, device="cuda"),
                                       torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]], device="cuda"))
            lines.append(f"- nerfacc {nerfacc.__version__}: CUDA extension built/loaded in {time.time() - started:.0f} s")
        except Exception as error:  # noqa: BLE001 (no nvcc, a compiler error: reported, the check goes on)
            lines.append(f"- nerfacc {nerfacc.__version__}: CUDA extension failed: {type(error).__name__}: "
                         f"{last_line(str(error))}")
    try:
        lines.append(f"- triton {importlib.metadata.version('triton')}: "
                     + ("fused kernels compile for the GPU" if cuda else "fused kernels run under the CPU interpreter"))
    except importlib.metadata.PackageNotFoundError:
        lines.append("- triton: not installed")
    lines.append("- tiny-cuda-nn: " + ("imports" if import_tcnn() is not None else
                                       f"not installed (not on the package index: {INSTALL_HINT})"))
    return "Extras:\n\n" + "\n".join(lines)


def stage_tests(cuda: bool, smoke: bool) -> str:
    """pytest on the files of the CUDA-only tests (collected only on a smoke run)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS]
    if smoke or not cuda:
        cmd.append("--collect-only")
    result = run(cmd, 420)
    summary = last_line(result.stdout) or last_line(result.stderr)
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    note = "" if cuda and not smoke else " (collected only: they need CUDA)"
    return (f"CUDA-only tests{note}: `pytest {' '.join(CUDA_TESTS)}`: {summary} (exit {result.returncode})"
            + "".join(f"\n- {line}" for line in skips))


def max_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> str:
    return "-" if a is None or b is None else f"{(a.float() - b.float()).abs().max().item():.1e}" if a.numel() else "0"


def hashgrid_rows(device: torch.device, smoke: bool) -> list[str]:
    """Outputs, table and point gradients of the fused and tcnn hash grids against the PyTorch encoder."""
    grid = (dict(n_levels=4, log2_table_size=12, base_resolution=4, finest_resolution=64) if smoke else
            dict(n_levels=16, log2_table_size=19, base_resolution=16, finest_resolution=2048))
    n = 300 if smoke else 2**18
    encoder = HashGridEncoder(n_features=2, **grid).to(device)
    with torch.no_grad():
        encoder.table.normal_()  # O(1) features: the differences mean something
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 3, generator=generator) * 2.2 - 1.1).to(device)
    grad_out = torch.randn(n, encoder.n_levels * 2, generator=generator).to(device)

    def torch_path(points: torch.Tensor) -> torch.Tensor:
        return encoder.forward_with_jacobian(points)[0][:, 3:]  # pure PyTorch, also on CUDA where forward() is fused

    def evaluate(encode: Callable[[torch.Tensor], torch.Tensor], params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params.grad = None
        points = x.clone().requires_grad_()
        out = encode(points)
        out.backward(grad_out)
        return out.detach(), params.grad, points.grad

    ref = evaluate(torch_path, encoder.table)
    rows = []
    if fused_available(device):
        out = evaluate(lambda p: fused_hash_encode(p, encoder.table, encoder.resolutions, encoder.offsets, encoder.n_dense,
                                                   encoder.table_size, encoder.level_mask, encoder.bound), encoder.table)
        mode = "CUDA" if device.type == "cuda" else "CPU interpreter"
        rows.append(f"| hash grid | fused Triton ({mode}) | {n} points, {grid['n_levels']} levels | "
                    f"{max_diff(out[0], ref[0])} | {max_diff(out[1], ref[1])} | {max_diff(out[2], ref[2])} |")
    else:
        rows.append("| hash grid | fused Triton | skipped: needs triton | - | - | - |")
    if device.type == "cuda" and import_tcnn() is not None:
        growth = level_growth(grid["n_levels"], grid["base_resolution"], grid["finest_resolution"])
        tcnn = TcnnHashGrid(grid["n_levels"], 2, grid["log2_table_size"], grid["base_resolution"], growth).to(device)
        out = evaluate(tcnn, tcnn.encoding.params)
        finite = all(bool(t.isfinite().all()) for t in out)
        rows.append(f"| hash grid | tiny-cuda-nn | {n} points: forward and backward {'finite' if finite else 'NOT finite'}; "
                    "its own parameter layout, compared by fit in tests/models/encoders/test_tcnn.py | - | - | - |")
    else:
        rows.append("| hash grid | tiny-cuda-nn | skipped: needs CUDA and tinycudann | - | - | - |")
    return rows


def occupancy_rows(device: torch.device, smoke: bool) -> list[str]:
    """nerfacc's marching and compositing weights against the PyTorch grid and renderer on the same rays."""
    if device.type != "cuda" or nerfacc_or_none() is None:
        return ["| occupancy grid | nerfacc marching | skipped: needs CUDA and nerfacc | - | - | - |",
                "| renderer | nerfacc weights | skipped: needs CUDA and nerfacc (CPU: tests/models/test_renderers.py "
                "checks nerfacc's padded weights) | - | - | - |"]
    resolution, n_rays = (32, 256) if smoke else (128, 8192)
    grid = NerfaccOccupancyGrid(resolution=resolution, decay=0.0).to(device)
    grid.update(lambda p: ((p.norm(dim=-1) > 0.4) & (p.norm(dim=-1) < 0.6)).float())  # a shell, one update
    generator = torch.Generator().manual_seed(0)
    origins = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=generator), dim=-1) * 2.5
    dirs = torch.nn.functional.normalize(torch.rand(n_rays, 3, generator=generator) - 0.5 - origins, dim=-1)
    rays = RayBundle(origins.to(device), dirs.to(device))
    ours, theirs = grid.sample(rays, 0.005, stratified=False), OccupancyGrid.sample(grid, rays, 0.005, stratified=False)
    counts = torch.bincount(ours.ray_indices, minlength=n_rays) - torch.bincount(theirs.ray_indices, minlength=n_rays)
    rows = [f"| occupancy grid | nerfacc marching | {n_rays} rays, {len(theirs)} PyTorch samples, {len(ours)} nerfacc | "
            f"{counts.abs().max().item()} samples per ray (max) | - | - |"]
    alpha = (torch.rand(len(theirs), generator=generator) * 0.3).to(device)
    upstream = torch.randn(len(theirs), generator=generator).to(device)
    grads = []
    for where in (device, torch.device("cpu")):  # nerfacc's scan on CUDA, the PyTorch scan on the CPU
        a = alpha.to(where).requires_grad_()
        weights = packed_weights(a, theirs.ray_indices.to(where), n_rays)
        (weights * upstream.to(where)).sum().backward()
        grads.append((weights.detach().cpu(), a.grad.cpu()))
    rows.append(f"| renderer | nerfacc weights | {len(theirs)} samples | {max_diff(grads[0][0], grads[1][0])} | "
                f"{max_diff(grads[0][1], grads[1][1])} (d/d alpha) | - |")
    return rows


def stage_backends(cuda: bool, smoke: bool) -> str:
    """Max |difference| of every accelerated backend to the pure-PyTorch path, as a table."""
    device = torch.device("cuda" if cuda else "cpu")
    head = ("| part | backend | inputs | max abs diff of outputs | of parameter grads | of point grads |\n"
            "|---|---|---|---|---|---|")
    return "Backends against the PyTorch path:\n\n" + "\n".join([head, *hashgrid_rows(device, smoke),
                                                                   *occupancy_rows(device, smoke)])


def speed_cases(cuda: bool, smoke: bool, cache: Path) -> dict[str, list[str]]:
    """{case: overrides} of the step timing on the synthetic scene (cached in ``cache``): grid on/off, full and
    mixed precision (mixed only on CUDA)."""
    base = [*(SMOKE_SCENE if smoke else GPU_ENCODER), f"data_dir={cache}"]
    precisions = ["32-true", "16-mixed"] if cuda else ["32-true"]
    return {f"{grid}, {precision}": [*speed.CASES[grid], *base, f"trainer.precision={precision}"]
            for grid in ("grid-on", "grid-off") for precision in precisions}


def stage_speed(cuda: bool, smoke: bool, cache: Path) -> str:
    """speed.py's step timing of each case (its own process), then the fused hash-grid encoder table."""
    steps, warmup = (2, 1) if smoke else (40, 20)
    rows, failures = {}, []
    for name, overrides in speed_cases(cuda, smoke, cache).items():
        try:
            rows[name] = {**speed.measure_in_child(overrides, steps, warmup), "overrides": overrides}
        except SystemExit as error:
            failures.append(f"- {name}: failed: {last_line(str(error))}")
        print(f"speed {name}: {rows[name]['steps_per_s']:.2f} steps/s" if name in rows else failures[-1], flush=True)
    text = f"Training steps (`benchmarks/speed.py`'s measurement, {steps} timed after {warmup}):\n\n{speed.table(rows)}"
    if not cuda:
        text += "\n- trainer.precision=16-mixed: skipped (needs CUDA)"
    text += "".join(f"\n{line}" for line in failures)
    cmd = [sys.executable, "-m", "benchmarks.fused_hashgrid", "--no-append", "--log2-points", "18", "20"]
    result = run(cmd, 300)
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    return (text + "\n\nHash-grid encoding (`python -m benchmarks.fused_hashgrid --log2-points 18 20`):\n\n"
            + ("\n".join(table) if table else f"- {last_line(result.stdout) or last_line(result.stderr)}"))


def first_reaching(run_dir: Path, tag: str, target: float) -> tuple[int, float] | None:
    """(step, seconds after the run's first logged event) of the first ``tag`` scalar >= ``target`` in the
    run's TensorBoard events; None if it never gets there."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(run_dir.rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        if tag not in tags:
            continue
        start = min(accumulator.Scalars(t)[0].wall_time for t in tags if accumulator.Scalars(t))
        for event in accumulator.Scalars(tag):
            if event.value >= target:
                return event.step, event.wall_time - start
    return None


def train_overrides(smoke: bool, data_dir: Path, seconds_left: float = BUDGET_S) -> list[str]:
    """launch.py's overrides of the training stage; on the GPU the recipe's time cap is lowered (to 30 s at the
    least) when less than that plus ``EVAL_S`` is ``seconds_left`` of the budget."""
    if smoke:
        return [*SMOKE_TRAIN, f"data_dir={data_dir}"]
    cap = max(int(seconds_left - EVAL_S), 30)
    return ["experiment=dtu-neus-gpu", f"data_dir={data_dir}",
            *([f"trainer.max_time=00:00:{cap // 60:02d}:{cap % 60:02d}"] if cap < RECIPE_MAX_TIME_S else [])]


def stage_train(cuda: bool, smoke: bool, data_dir: Path, out: Path, seconds_left: float) -> str:
    """Train the GPU recipe (smoke: the tiny synthetic scene) within ``seconds_left`` and report its metrics and
    time to the IoU target."""
    if not cuda and not smoke:
        return "Training: skipped (needs CUDA; --smoke trains a tiny scene on the CPU)"
    overrides = train_overrides(smoke, data_dir, seconds_left)
    run_dir = out / "train"
    try:
        metrics = launch(overrides, run_dir)
    except SystemExit as error:
        return f"Training `python launch.py {' '.join(overrides)}`: failed: {last_line(str(error))}"
    reached = first_reaching(run_dir, "val/iou", IOU_TARGET)
    when = (f"step {reached[0]}, {reached[1]:.0f} s after the first logged step" if reached else "not reached")
    interval = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["trainer"]["val_check_interval"]
    return (f"Training `{metrics['command']}`: {metrics['step']} steps, train time {metrics.get('train_time_s', '-')} s "
            f"(wall {metrics['wall_s']} s); held-out PSNR {metrics.get('psnr', float('nan')):.2f}, IoU "
            f"{metrics.get('iou', float('nan')):.4f} ({metrics.get('n_test_views', '-')} views); validation IoU >= "
            f"{IOU_TARGET} (first held-out view, every {interval} steps): {when}")


def plan(cuda: bool, smoke: bool, cache: Path, data_dir: Path) -> list[str]:
    """One line per stage: what it runs (speed cases on the synthetic scene cached in ``cache``)."""
    extras = "nothing installed (smoke)" if smoke else f"pip install {' '.join(INDEX_EXTRAS)}; build nerfacc's CUDA extension"
    cases = "; ".join(f"{name}: {' '.join(overrides)}" for name, overrides in speed_cases(cuda, smoke, cache).items())
    return [f"extras: {extras}; report triton, tiny-cuda-nn",
            f"tests: pytest {' '.join(CUDA_TESTS)}" + (" --collect-only" if smoke or not cuda else ""),
            "backends: hash grid torch vs fused Triton vs tiny-cuda-nn; occupancy grid and weights torch vs nerfacc",
            f"speed: {cases}; python -m benchmarks.fused_hashgrid --log2-points 18 20",
            f"train: python launch.py {' '.join(train_overrides(smoke, data_dir))} (validation IoU >= {IOU_TARGET})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; never writes docs/BENCHMARKS.md")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data", help="holds dtu/scan24")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / time.strftime("gpu_check_%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    cache = args.out / "data"  # the synthetic scene of the speed cases (and of a smoke run's training)
    data_dir = cache if args.smoke else args.data_dir.resolve()
    print(f"GPU check on {device_name()}" + (" (smoke: tiny sizes, CPU)" if args.smoke else ""))
    if args.dry_run:  # the plan of a GPU run even without one, unless --smoke
        print("\n".join(line for line in plan(not args.smoke, args.smoke, cache, data_dir) if line.split(":")[0] in args.stages))
        return
    if not cuda and not args.smoke:
        print("no CUDA device: stages that need one are skipped (use --smoke for a CPU smoke run)")
    stages: dict[str, Callable[[], str]] = {
        "extras": lambda: stage_extras(cuda, args.smoke), "tests": lambda: stage_tests(cuda, args.smoke),
        "backends": lambda: stage_backends(cuda, args.smoke), "speed": lambda: stage_speed(cuda, args.smoke, cache),
        "train": lambda: stage_train(cuda, args.smoke, data_dir, args.out, BUDGET_S - (time.time() - started))}
    started, parts = time.time(), []
    for name in args.stages:
        stage_started = time.time()
        print(f"== {name}", flush=True)
        try:
            parts.append(stages[name]())
        except Exception as error:  # noqa: BLE001 (e.g. nerfacc's CUDA extension did not build): reported, the next stage runs
            parts.append(f"Stage {name}: failed: {type(error).__name__}: {last_line(str(error))}")
        print(f"{parts[-1]}\n({name}: {time.time() - stage_started:.0f} s)", flush=True)
    commit = commit_id()
    report = (f"\n### GPU check, {date.today()}, commit {commit}, {device_name()}\n\n`python -m benchmarks.gpu_check "
              f"{' '.join(sys.argv[1:])}`".rstrip() + f", {time.time() - started:.0f} s in all.\n\n" + "\n\n".join(parts) + "\n")
    publish(report, append=not (args.smoke or args.no_append))


if __name__ == "__main__":
    main()
