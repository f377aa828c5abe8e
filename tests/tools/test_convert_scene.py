"""python -m tools.convert_scene: exit codes, refusal to overwrite, nothing left behind on bad input."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tools.convert_scene import main

ROOT = Path(__file__).resolve().parents[2]


def test_converts_both_ways(small_synthetic: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "json").mkdir()  # an empty OUT is fine
    assert main([str(small_synthetic), str(tmp_path / "json")]) == 0
    output = capsys.readouterr()
    assert "6 views" in output.out and "writing images: 100%" in output.err and "6/6" in output.err  # a progress bar
    assert sorted(p.name for p in (tmp_path / "json").iterdir()) == ["gt_mesh.ply", "images", "transform.json"]
    assert main([str(tmp_path / "json"), str(tmp_path / "sub" / "npz")]) == 0
    assert sorted(p.name for p in (tmp_path / "sub" / "npz").iterdir()) == ["cameras_sphere.npz", "gt_mesh.ply", "image", "mask"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["npz"]  # no temporary folder left


def test_refuses_to_overwrite(small_synthetic: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main([str(small_synthetic), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: already exists and is not empty") and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_input_leaves_nothing(small_synthetic: Path, tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "neither a NeuS/IDR scene" in capsys.readouterr().err
    scene = Path(shutil.copytree(small_synthetic, tmp_path / "scene"))
    (scene / "mask" / "005.png").unlink()
    assert main([str(scene), str(tmp_path / "out")]) == 2
    assert "5 masks but 6 images" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no OUT, no temporary folder
    (scene / "transforms.json").write_text("{}")
    assert main([str(scene), str(tmp_path / "out")]) == 2
    assert "holds both a camera npz and a transforms json" in capsys.readouterr().err


def test_command_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tools.convert_scene", "/nonexistent/scene", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, "error: /nonexistent/scene: scene folder does not exist\n")
    assert not (tmp_path / "out").exists()
