"""NeuS end to end: a short CPU run on a small synthetic scene beats the initial sphere."""
import json

import pytest

SMALL = [
    "dataset.n_views=16", "dataset.width=96", "dataset.height=72", "dataset.test_every=8",
    "trainer.val_check_interval=1000", "trainer.checkpoint_every_n_steps=1000",
    "export.resolution=64", "eval.chamfer_points=20000", "system.rays.target_samples=8192",
]


@pytest.mark.slow
def test_short_run_halves_the_chamfer_of_the_initial_sphere(launch, tmp_path):
    data = tmp_path / "data"
    chamfer = {}
    for steps in (1, 300):
        run_dir = tmp_path / f"run{steps}"
        result = launch(*SMALL, f"trainer.max_steps={steps}", f"data_dir={data}", f"hydra.run.dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
        chamfer[steps] = json.loads((run_dir / "metrics.json").read_text())["chamfer"]
    assert chamfer[300] < 0.5 * chamfer[1], chamfer
