"""Cameras alone on a frozen scene: how fast each pose parametrisation converges given a right scene.

Takes a finished fixed-camera NeuS run (trained with the true poses), freezes its scene, and
optimises trainable cameras from the issue-5 start (3 degrees, 2 % centre noise) with the
photometric L1 and mask losses of training: Adam, the learning rate decaying to 0.1x over
``--steps``. Prints the mean rotation error (after :func:`models.cameras.align_poses`) every
``--every`` steps, one column per case, as a table for docs/BENCHMARKS.md.

    python launch.py hydra.run.dir=outputs/fixed                          # the scene, once
    python -m benchmarks.frozen_cameras --run outputs/fixed               # both cases
    python -m benchmarks.frozen_cameras --run outputs/fixed --cases plain --steps 200
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from systems.assembly import build_system
from systems.base import opacity_mask_loss
from systems.run_dir import find_checkpoint, load_weights

ROOT = Path(__file__).resolve().parents[1]

NOISE = {"rotation_deg": 3.0, "translation": 0.02, "seed": 0}
CASES = {  # camera overrides and Adam learning rate
    "plain": ({"precondition": False}, 3e-3),
    "precondition": ({"precondition": True}, 1.5e-3),
}


def converge(run: Path, overrides: dict, lr: float, steps: int, every: int, rays: int) -> dict[int, float]:
    """Mean rotation error (degrees) of the training views at steps 0, every, 2 every, ... steps."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.camera = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "camera" / "trainable.yaml"), {"noise": NOISE, **overrides})
    _, ckpt = find_checkpoint(str(run))
    state = load_weights(ckpt)["state_dict"]
    torch.manual_seed(0)
    system = build_system(cfg, run)
    system.load_state_dict({k: v for k, v in state.items() if not k.startswith("cameras.")}, strict=False)
    system.requires_grad_(False)
    system.cameras.requires_grad_(True)
    optimiser = torch.optim.Adam(system.cameras.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.1 ** (s / steps))
    mask_weight = float(cfg.system.loss.mask)
    errors = {}
    for step in range(steps + 1):
        if step % every == 0:
            errors[step] = system.cameras.errors(system.train_ids)["rotation_error_deg"]
            print(f"  step {step}: {errors[step]:.3f} deg", flush=True)
        if step == steps:
            break
        batch, target, mask, background = system.sample_rays(rays)
        out = system.model.render(batch, background, 1.0, stratified=True, create_graph=True)
        loss = F.l1_loss(out["rgb"], target)
        if mask is not None:
            loss = loss + mask_weight * opacity_mask_loss(out["opacity"], mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished fixed-camera NeuS run directory")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rays", type=int, default=2048)
    args = parser.parse_args()
    columns = {}
    for name in args.cases:
        overrides, lr = CASES[name]
        print(f"{name}: camera {overrides}, lr {lr:g}", flush=True)
        columns[name] = converge(args.run, overrides, lr, args.steps, args.every, args.rays)
    print("\n| step | " + " | ".join(f"{name} (lr {CASES[name][1]:g})" for name in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for step in next(iter(columns.values())):
        print(f"| {step} | " + " | ".join(f"{columns[name][step]:.3f}°" for name in columns) + " |")


if __name__ == "__main__":
    main()
