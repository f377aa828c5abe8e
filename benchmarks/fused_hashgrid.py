"""Hash-grid encoding benchmark: forward + backward of the PyTorch ``HashGridEncoder`` against the fused
Triton kernels (models/encoders/fused_hashgrid.py) and tiny-cuda-nn when it imports, on the GPU.

    python -m benchmarks.fused_hashgrid                     # N = 2^16 .. 2^20 points, default encoder
    python -m benchmarks.fused_hashgrid --log2-points 18 --x-grad --no-append

Every iteration encodes N uniform points and backpropagates a fixed random gradient into the table
(and into the points with ``--x-grad``, as with trainable cameras). The max |fused - torch| column
checks the fused features against the PyTorch ones on the timed device. Needs CUDA: Triton's CPU
interpreter is a test tool, not a benchmark, so without a GPU this prints a message and exits 0.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

from benchmarks.quality import commit_id, device_name, publish
from models.encoders import HashGridEncoder
from models.encoders.fused_hashgrid import fused_available, fused_hash_encode
from models.encoders.hashgrid import level_growth
from models.encoders.tcnn import TcnnHashGrid, import_tcnn

ROOT = Path(__file__).resolve().parents[1]


def time_ms(step: Callable[[], None], warmup: int, iters: int) -> float:
    """Mean milliseconds of ``step`` on the GPU after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / iters


def encoders(args: argparse.Namespace) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """{name: x (N, 3) -> level features (N, L F)} of the compared implementations, same grid settings."""
    grid = dict(n_levels=args.levels, n_features=args.features, log2_table_size=args.log2_table,
                base_resolution=args.base_resolution, finest_resolution=args.finest_resolution)
    torch_encoder = HashGridEncoder(**grid).cuda()
    with torch.no_grad():
        torch_encoder.table.normal_()  # O(1) features, so the max-diff column means something
    impls = {
        "torch": lambda x: torch_encoder(x)[:, 3:],
        "fused (triton)": lambda x: fused_hash_encode(
            x, torch_encoder.table, torch_encoder.resolutions, torch_encoder.offsets, torch_encoder.n_dense,
            torch_encoder.table_size, torch_encoder.level_mask, torch_encoder.bound),
    }
    if import_tcnn() is not None:
        growth = level_growth(args.levels, args.base_resolution, args.finest_resolution)
        impls["tinycudann"] = TcnnHashGrid(args.levels, args.features, args.log2_table, args.base_resolution,
                                           growth).cuda()
    return impls


def table(rows: list[dict]) -> str:
    head = ("| implementation | N | ms/iter | Mpoints/s | speed-up vs torch | max abs diff vs torch |\n"
            "|---|---|---|---|---|---|")
    lines = [f"| {r['name']} | 2^{r['log2_n']} | {r['ms']:.3f} | {2 ** r['log2_n'] / r['ms'] / 1e3:.1f} | "
             f"{r['speedup']:.2f}x | {r['diff']} |" for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log2-points", type=int, nargs="+", default=[16, 17, 18, 19, 20])
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--features", type=int, default=2)
    parser.add_argument("--log2-table", type=int, default=19)
    parser.add_argument("--base-resolution", type=int, default=16)
    parser.add_argument("--finest-resolution", type=int, default=2048)
    parser.add_argument("--x-grad", action="store_true", help="also backpropagate into the points")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not fused_available("cuda"):
        print("fused hash-grid benchmark: needs a CUDA GPU and triton (Triton's CPU interpreter is no benchmark); "
              "nothing to do")
        return

    impls = encoders(args)
    rows = []
    for log2_n in args.log2_points:
        generator = torch.Generator(device="cuda").manual_seed(0)
        x = (torch.rand(2**log2_n, 3, device="cuda", generator=generator) * 2 - 1).requires_grad_(args.x_grad)
        grad = torch.randn(2**log2_n, args.levels * args.features, device="cuda", generator=generator)
        with torch.no_grad():
            reference = impls["torch"](x)
        baseline = None
        for name, encode in impls.items():
            ms = time_ms(lambda encode=encode, x=x, grad=grad: encode(x).backward(grad), args.warmup, args.iters)
            baseline = baseline or ms
            with torch.no_grad():
                diff = "-" if name != "fused (triton)" else f"{(encode(x) - reference).abs().max().item():.1e}"
            rows.append(dict(name=name, log2_n=log2_n, ms=ms, speedup=baseline / ms, diff=diff))
        torch.cuda.empty_cache()

    commit = commit_id()
    command = "python -m benchmarks.fused_hashgrid " + " ".join(sys.argv[1:])
    settings = (f"{args.levels} levels, F={args.features}, table 2^{args.log2_table}, resolutions "
                f"{args.base_resolution}..{args.finest_resolution}, forward + backward into the table"
                + (" and the points" if args.x_grad else ""))
    report = (f"\n### Fused hash-grid encoding, {date.today()}, commit {commit}, {device_name()}\n\n"
              f"{settings}; `{command.strip()}`\n\n{table(rows)}\n")
    publish(report, append=not args.no_append)


if __name__ == "__main__":
    main()
