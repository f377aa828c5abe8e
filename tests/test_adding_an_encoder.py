"""README's "Adding an encoder, a system or a dataset": its worked example, an encoder module and its YAML file
written into a copy of the repository, trains with the README's command and nothing else changed."""
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir

from datasets.npz import load_npz_scene
from models.cameras import FixedCameras
from systems.config import register_configs
from systems.trust import build

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Adding an encoder, a system or a dataset"
# What a copy of the repository leaves out: hidden folders (history, caches, environments), outputs, data, tests, docs.
NOT_COPIED = shutil.ignore_patterns(".*", "outputs", "multirun", "data", "tests", "docs", "build", "__pycache__", "*.egg-info")


def readme_example() -> tuple[dict[str, str], list[str]]:
    """The section's files (``{relative path: text}``, from code blocks whose first line is ``# PATH``) and the
    arguments of its first ``python launch.py`` command."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(SECTION)
    section = readme[start:readme.index("\n## ", start + len(SECTION))]
    files, command = {}, None
    for language, body in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S):
        first, _, rest = body.partition("\n")
        if language in ("python", "yaml") and first.startswith("# "):
            files[first[2:].strip()] = rest
        elif language == "bash" and command is None:
            command = body.split("#")[0].split()
    assert command is not None and command[:2] == ["python", "launch.py"], command
    return files, command[2:]


def test_the_readme_encoder_builds_a_system_whose_sdf_starts_as_a_sphere_and_steps(tmp_path, small_synthetic, monkeypatch):
    """The quick check: the README's module imported as ``models.encoders.random_fourier`` and its YAML file in a copy
    of configs/, composed and built as launch.py does, then one NeuS training step."""
    files, args = readme_example()
    module_file, yaml_file = tmp_path / "random_fourier.py", tmp_path / "configs" / "encoder" / "random_fourier.yaml"
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    module_file.write_text(files["models/encoders/random_fourier.py"])
    yaml_file.write_text(files["configs/encoder/random_fourier.yaml"])
    spec = importlib.util.spec_from_file_location("models.encoders.random_fourier", module_file)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    register_configs()
    with initialize_config_dir(config_dir=str(tmp_path / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[*args, "system.model.grid.resolution=16", "system.rays.initial=64",
                                           "system.loss.eikonal_points=64"])
    torch.manual_seed(0)
    scene = load_npz_scene(str(small_synthetic))
    system = build(cfg.system, run_dir=None, _convert_="object", _partial_=True)(
        scene=scene, cameras=FixedCameras(scene.intrinsics, scene.c2w))
    encoder = system.model.geometry.encoder
    assert isinstance(encoder, module.RandomFourierEncoder) and encoder.out_dim == 67
    directions = F.normalize(torch.randn(256, 3), dim=-1)
    torch.testing.assert_close(encoder(directions)[:, :3], directions)  # the raw xyz first
    with torch.no_grad():  # the SDF starts as a sphere of radius 0.5 (init_radius)
        inside, outside = system.model.geometry.sdf(0.25 * directions), system.model.geometry.sdf(0.75 * directions)
    assert (inside < 0).all() and (outside > 0).all()
    monkeypatch.setattr("systems.neus.log_scalars", lambda *args, **kwargs: None)
    system.on_fit_start()
    loss = system.training_step(None, 0)
    loss.backward()
    grads = [p.grad for p in system.model.geometry.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
def test_the_readme_encoder_example_trains_from_one_module_and_one_yaml(tmp_path, tiny):
    """The README's command in a copy of the repository holding its two files: a whole run (train, export, evaluate)."""
    files, args = readme_example()
    assert sorted(files) == ["configs/encoder/random_fourier.yaml", "models/encoders/random_fourier.py"]
    assert args == ["encoder=random_fourier"]
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=NOT_COPIED)
    for path, text in files.items():
        assert not (repo / path).exists(), path  # new files, nothing else edited
        (repo / path).write_text(text)
    run_dir = tmp_path / "run"
    small = [a for a in tiny if not a.startswith("encoder.")]  # encoder.compile is the hash grid's
    result = subprocess.run([sys.executable, "launch.py", *args, *small, f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"],
                            cwd=repo, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["encoder"] == yaml.safe_load(files["configs/encoder/random_fourier.yaml"])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    # The SDF field was built on the new encoder: its basis (32, 3) and a first layer 3 + 2 * 32 wide.
    assert state["model.geometry.encoder.basis"].shape == (32, 3)
    first = [v.shape for k, v in state.items() if k.startswith("model.geometry.layers.0.") and v.dim() == 2]
    assert any(shape[1] == 67 for shape in first), first  # weight-normed: (out, 1) and (out, 67)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and math.isfinite(metrics["chamfer"]) and metrics["chamfer"] > 0
