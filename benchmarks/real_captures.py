"""Real-capture benchmark: DTU scan24 trained without masks, and scan24 from its images alone
(no cameras, no masks) through ``tools.colmap_scene``. Prints one table and appends it to
docs/BENCHMARKS.md.

    python -m benchmarks.real_captures                        # both jobs, 20 training minutes each
    python -m benchmarks.real_captures --jobs unmasked
    python -m benchmarks.real_captures --jobs colmap --scene /tmp/scan24_colmap   # reuse a tool output

Held-out silhouette IoU is measured against the reference masks of scan24's held-out views (8, 13,
16, 21), which training never sees. For the COLMAP job those views are rendered from their
reference cameras mapped into the COLMAP frame by the similarity that aligns the training views'
COLMAP poses to their reference poses (:func:`models.cameras.align_poses`), so pose errors count.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.quality import commit_id, device_name, launch, publish
from datasets.npz import load_npz_scene
from models.cameras import align_poses
from models.metrics import silhouette_iou

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data"
TEST_VIEWS = [8, 13, 16, 21]
BUDGET = ["trainer.max_time=00:00:20:00", "trainer.max_steps=3000"]


def aligned_iou(run_dir: Path, scene_dir: Path, reference_dir: Path, downscale: int = 2) -> dict[str, float]:
    """Mean held-out IoU of a run on a COLMAP scene, its held-out views rendered from their reference
    cameras mapped into the COLMAP frame; and the training views' pose errors after that alignment."""
    from systems.assembly import load_run  # noqa: PLC0415  (imports Lightning; only this job needs it)
    from models.cameras import pose_errors  # noqa: PLC0415

    system = load_run(str(run_dir))
    reference = load_npz_scene(str(reference_dir))
    photos = json.loads((scene_dir / "colmap_images.json").read_text())["images"]  # our index -> photo name
    ref_names = [p.name for p in sorted((reference_dir / "image").iterdir())]
    index = {ref_names.index(photo): i for i, photo in enumerate(photos)}  # reference view -> COLMAP view
    train = [v for v in index if v not in TEST_VIEWS]
    with torch.no_grad():
        _, colmap_c2w = system.cameras(torch.arange(system.scene.n_views))
    sim = align_poses(reference.c2w[train].double(), colmap_c2w[[index[v] for v in train]].double())
    errors = pose_errors(sim.poses(reference.c2w[train].double()), colmap_c2w[[index[v] for v in train]].double())
    ious = []
    for view in TEST_VIEWS:
        k = reference.intrinsics[view].clone()
        k[:2] /= downscale
        h, w = reference.hw
        c2w = sim.poses(reference.c2w[view:view + 1].double())[0].float()
        with torch.no_grad():
            opacity = system.render_image(k, c2w, h // downscale, w // downscale)["opacity"]
        mask = F.avg_pool2d(reference.masks[view][None, None], downscale)[0, 0] > 0.5
        ious.append(silhouette_iou(opacity, mask))
    return {"iou_aligned": sum(ious) / len(ious), "rotation_error_deg": errors["rotation_error_deg"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", default=["unmasked", "colmap"], choices=["unmasked", "colmap"])
    parser.add_argument("--scene", type=Path, help="an existing tools.colmap_scene output of scan24's images (skips SfM)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--eval-downscale", type=int, default=2, help="held-out views at 1/N resolution (scan24: 2 -> 400x300)")
    parser.add_argument("--no-append", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = parser.parse_args()
    scan = DATA / "dtu" / "scan24"
    if not scan.is_dir():
        raise SystemExit(f"error: {scan}: shared DTU scan24 not found; this benchmark needs it")
    rows = {}
    if "unmasked" in args.jobs:
        overrides = ["dataset=dtu", "scan=24", f"data_dir={DATA}", "dataset.use_masks=false", *BUDGET,
                     f"system.eval_downscale={args.eval_downscale}"]
        rows["scan24, masks withheld"] = launch(overrides, args.out / "unmasked")
    if "colmap" in args.jobs:
        scene, sfm_s = args.scene, None
        if scene is None:
            scene, started = args.out / "colmap_scene", time.time()
            subprocess.run([sys.executable, "-m", "tools.colmap_scene", str(scan / "image"), str(scene)], cwd=ROOT, check=True)
            sfm_s = round(time.time() - started, 1)
        overrides = ["dataset=colmap", f"dataset.root={scene}", "dataset.use_masks=false", f"dataset.test_views={TEST_VIEWS}",
                     "dataset.test_every=null", *BUDGET, f"system.eval_downscale={args.eval_downscale}"]
        metrics = launch(overrides, args.out / "colmap")
        metrics.update(aligned_iou(args.out / "colmap", scene, scan, args.eval_downscale), sfm_s=sfm_s)
        rows["scan24 from images alone (COLMAP)"] = metrics
    fmt = lambda m, k, f: format(m[k], f) if m.get(k) is not None else "-"  # noqa: E731
    lines = ["| job | steps | train s | wall s | SfM s | eval at | PSNR | IoU | IoU, reference cameras aligned | pose err. ° | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {m['step']} | {m.get('train_time_s', '-')} | {m['wall_s']} | {fmt(m, 'sfm_s', '.0f')} | 1/{m['eval_downscale']} | {fmt(m, 'psnr', '.2f')} | "
              f"{fmt(m, 'iou', '.4f')} | {fmt(m, 'iou_aligned', '.4f')} | {fmt(m, 'rotation_error_deg', '.3f')} | `{m['command']}` |"
              for name, m in rows.items()]
    commit = commit_id()
    publish(f"\n### Real captures, {date.today()}, commit {commit}, {device_name()}\n\n" + "\n".join(lines) + "\n", append=not args.no_append)


if __name__ == "__main__":
    main()
