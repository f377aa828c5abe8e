"""The render-speed benchmark's measurement: one held-out view with every sample and with early ray termination."""
from pathlib import Path

import torch

import systems.neus
from benchmarks.render_speed import render
from systems.assembly import build_system, compose_config


def test_render_counts_the_samples_and_early_termination_renders_the_same_view(small_synthetic: Path, tmp_path):
    cfg = compose_config(["dataset=dtu", f"dataset.root={small_synthetic}", "dataset.test_views=[5]",
                          "system.model.grid.resolution=32", "encoder.compile=false", "system.eval_downscale=2"])
    system = build_system(cfg, tmp_path / "run").eval()
    full, full_s, full_per_ray = render(system, 5, 0.0)
    marched, marched_s, marched_per_ray = render(system, 5, 1e-4)
    h, w = system.scene.hw
    assert full["rgb"].shape == (h // 2, w // 2, 3) and full_s > 0 and marched_s > 0
    assert 0 < marched_per_ray <= full_per_ray
    for key in ("rgb", "opacity", "depth", "normal"):
        torch.testing.assert_close(marched[key], full[key], atol=1e-3, rtol=0)
    assert systems.neus.EVAL_STOP_TRANSMITTANCE == 1e-4 and "render" not in vars(system.model)  # both put back
