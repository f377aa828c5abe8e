"""DDP with Lightning's own strategy on the CPU (gloo, two processes): averaged gradients equal one process's on
the union of the rays, also when one process's rays all miss the surface (IDR); an end-to-end run of launch.py
keeps the run-directory contract."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from core.geometry import RayBundle, pixel_rays
from datasets.npz import load_npz_scene
from launch import compose_config
from models.cameras import FixedCameras
from systems.run_dir import MARKER, folder_state

ROOT = Path(__file__).resolve().parents[2]
RAYS = 96  # per process
IDR = ["system=idr", "encoder=frequency", f"system.n_rays={RAYS}", "system.loss.eikonal=0"]  # per-ray losses only

# Run as a script (Lightning's DDP launcher re-runs it as rank 1): one training step of IDR on two processes, rank r on
# batches[r]; each saves its gradients, which DDP has averaged, before the optimiser step.
SCRIPT = '''
import sys
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from datasets.npz import load_npz_scene
from launch import compose_config
from models.cameras import FixedCameras
from systems.idr import IDRSystem

scene_dir, batches_file, out = sys.argv[1:4]


class FixedRays(IDRSystem):
    def sample_rays(self, n):
        return self.batches[self.global_rank]


class SaveGradients(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {k: p.grad.clone() for k, p in pl_module.named_parameters() if p.grad is not None}
        torch.save(grads, f"{out}/grads{trainer.global_rank}.pt")


cfg = compose_config([*sys.argv[4:], "system._target_=__main__.FixedRays"])
scene = load_npz_scene(scene_dir)
torch.manual_seed(0)
system = instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(
    scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))
system.batches = torch.load(batches_file, weights_only=False)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, limit_val_batches=0, num_sanity_val_steps=0,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     inference_mode=False, callbacks=[SaveGradients()])
trainer.fit(system)
'''


def build_idr(scene_dir: Path, overrides: list[str]):
    cfg = compose_config(overrides)
    scene = load_npz_scene(str(scene_dir))
    torch.manual_seed(0)
    return instantiate(cfg.system, run_dir=None, _convert_="object", _partial_=True)(
        scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))


def ray_batches(system) -> list[tuple]:
    """Two batches of RAYS training rays (rays, rgb, mask, background): random pixels (rank 0), and the same
    pixels' rays turned to point away from the object, so that none hits it (rank 1)."""
    generator = torch.Generator().manual_seed(1)
    scene, (h, w) = system.scene, system.scene.hw
    views = system.train_ids[torch.randint(len(system.train_ids), (RAYS,), generator=generator)]
    px, py = torch.randint(w, (RAYS,), generator=generator), torch.randint(h, (RAYS,), generator=generator)
    rays = pixel_rays(scene.intrinsics[views], scene.c2w[views], px.float() + 0.5, py.float() + 0.5)
    away = RayBundle(rays.origins, torch.nn.functional.normalize(rays.origins, dim=-1))
    mask, bg = scene.train_masks[views, py, px], torch.zeros(3)
    rgb = scene.images[views, py, px] * mask[:, None]
    return [(rays, rgb, mask, bg), (away, rgb, mask, bg)]


def gradients(system, batch: tuple) -> dict[str, torch.Tensor]:
    """The gradients of one training step of ``system`` on ``batch``, in one process."""
    system.sample_rays = lambda n: batch
    system.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        system.training_step(None, 0).backward()
    return {k: p.grad.clone() for k, p in system.named_parameters() if p.grad is not None}


def test_each_process_draws_its_own_rays(small_synthetic):
    directions = []
    for rank in (0, 0, 1):
        system = build_idr(small_synthetic, IDR)
        system.trainer = SimpleNamespace(global_rank=rank)
        torch.manual_seed(42)
        system.on_fit_start()
        directions.append(system.sample_rays(16)[0].directions)
    assert torch.equal(directions[0], directions[1]) and not torch.allclose(directions[0], directions[2])


@pytest.mark.slow
def test_two_processes_average_to_one_process_on_the_union_of_their_rays(small_synthetic, tmp_path):
    system = build_idr(small_synthetic, IDR)
    batches = ray_batches(system)
    with torch.no_grad():
        hits = [int(system.model.render(b[0], b[2] > 0.5, b[3])["hit"].sum()) for b in batches]
    assert hits[0] > 10 and hits[1] == 0  # rank 1's step has no ray on the surface
    torch.save(batches, tmp_path / "batches.pt")
    (tmp_path / "ddp_step.py").write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(tmp_path / "ddp_step.py"), str(small_synthetic), str(tmp_path / "batches.pt"),
                             str(tmp_path), *IDR], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"grads{r}.pt") for r in (0, 1)]

    (rays0, rgb0, mask0, bg), (rays1, rgb1, mask1, _) = batches
    union = (RayBundle(torch.cat([rays0.origins, rays1.origins]), torch.cat([rays0.directions, rays1.directions])),
             torch.cat([rgb0, rgb1]), torch.cat([mask0, mask1]), bg)
    expected = gradients(build_idr(small_synthetic, [*IDR, f"system.n_rays={2 * RAYS}"]), union)
    first_half = gradients(build_idr(small_synthetic, IDR), batches[0])
    assert ranks[0].keys() == ranks[1].keys() == expected.keys() and len(expected) > 4
    for name, grad in expected.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], grad, rtol=1e-4, atol=1e-7), (name, (ranks[0][name] - grad).abs().max())
    assert any(not torch.allclose(first_half[k], expected[k], rtol=1e-2) for k in expected)  # the average is not rank 0's alone


@pytest.mark.slow
def test_launch_with_two_processes_keeps_the_run_directory_contract(launch, tiny, tmp_path):
    run_dir = tmp_path / "ddp"
    result = launch(*tiny, f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}", "trainer.val_check_interval=6",
                    "system.eval_downscale=2", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("== neus-") == 1  # one summary: rank 1 prints none
    # Rank 1 re-ran the command line into the same folder: it wrote no file of its own (its log went to the console).
    assert folder_state(run_dir) == "run"
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "launch.log", "checkpoints", "tensorboard", "meshes", "renders",
                                                    "metrics.json", MARKER}
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"step000003.ckpt", "step000006.ckpt", "last.ckpt"}
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6
    # The two held-out views were split across the processes and gathered: each rendered and scored once.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["n_test_views"] == 2 and metrics["chamfer"] < 20 and metrics["psnr"] > 5
    assert sorted(p.name for p in (run_dir / "renders").glob("*_rgb.png")) == ["view000_rgb.png", "view004_rgb.png"]
    assert (run_dir / "meshes" / "final.ply").stat().st_size > 0
    assert not list(run_dir.rglob("*.tmp"))
