"""python launch.py --cfg job prints the composed config with a one-line comment after each documented key."""
from __future__ import annotations

import dataclasses

import pytest
import yaml
from omegaconf import OmegaConf

from launch import compose_config
from systems.config import Config, Export, NeuSConfig, Optim
from systems.config_doc import dataclass_comments, docstring_sentence, job_config_request, yaml_comments


def test_field_comments_are_read_with_their_continuation_lines_and_from_the_bases() -> None:
    optim = dataclass_comments(Optim)
    assert optim["lr_camera"] == "camera=trainable: preconditioned pose residuals (about radians)"
    assert optim["camera_decay_steps"] == ("the camera rate reaches final_lr_ratio by this step at the latest, then decays on "
                                           "(longer NeuS runs drift otherwise); None: follow the run")
    assert "lr" not in optim and "warmup_steps" not in optim  # undocumented fields get no comment
    top = dataclass_comments(Config)
    assert top["resume"].endswith("else a fresh start (requeued cluster jobs, re-run sweeps)")  # continued under the comment
    assert top["callbacks"].startswith("named Lightning callbacks")  # the block above the field
    assert dataclass_comments(Export)["points"].startswith("also write <stem>_points.ply")
    assert dataclass_comments(NeuSConfig)["background"].startswith("black | white | random")  # from SystemConfig
    assert docstring_sentence(Optim).startswith("Learning rates per parameter group, and their schedule")
    assert docstring_sentence(Export) == "``export``: the mesh written after training (mode=train, test, export)."

    @dataclasses.dataclass
    class Undocumented:
        size: int = 1

    assert docstring_sentence(Undocumented) is None  # dataclass's made-up docstring is no documentation


def test_yaml_comments_of_a_group_file() -> None:
    text = ("# @package _group_\n# The scene. More words here.\n# Second line.\n_target_: a.b\nroot: x  # where it is\n"
            "nested:\n  # above the key\n  key: 1\n  other: 2      # a comment that\n                # goes on here\n"
            "list:\n- a: 1  # not documented\ndefaults:\n  - x  # not a key\n")
    assert yaml_comments(text, ("dataset",)) == {
        ("dataset",): "The scene.", ("dataset", "root"): "where it is", ("dataset", "nested", "key"): "above the key",
        ("dataset", "nested", "other"): "a comment that goes on here"}


@pytest.mark.parametrize("args, expected", [
    (["--cfg", "job", "seed=1"], (["seed=1"], False)), (["-c", "job", "--resolve"], ([], True)), (["--cfg=job"], ([], False)),
    (["--cfg", "hydra"], None), (["--cfg", "job", "--package", "trainer"], None), (["--help"], None), (["seed=1"], None)])
def test_only_cfg_job_is_ours(args, expected) -> None:
    request = job_config_request(args)
    assert (request if request is None else (request.overrides, request.resolve)) == expected


def test_cfg_job_prints_the_config_with_comments(launch) -> None:
    result = launch("--cfg", "job", "dataset=blender", "export.points=100")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for line in ("  max_time: null  # DD:HH:MM:SS of training (evaluation comes after); a budget without max_steps",
                 "scan: 24  # DTU scan id, used by dataset=dtu",
                 "  points: 100  # also write <stem>_points.ply: this many surface points with normals and colours; 0: off",
                 "  downscale: 1  # integer factor: images box-filtered that much smaller (intrinsics follow)",
                 "  max_test_views: null  # keep only the first N test frames as held-out views (null: every one)",
                 "    lr_camera: 0.0015  # camera=trainable: preconditioned pose residuals (about radians)",
                 "dataset:  # NeRF-synthetic (Blender) scenes: python launch.py dataset=blender dataset.scene=lego "
                 "data_dir=../shared/data",
                 "video:  # mode=video: MP4s of RGB and normals along a camera path."):
        assert line in lines, line
    assert sum("  # " in line for line in lines) > 60
    # The config itself is the one that runs: comments aside, what Hydra's --cfg job prints.
    assert yaml.safe_load(result.stdout) == OmegaConf.to_container(compose_config(["dataset=blender", "export.points=100"]))


@pytest.mark.slow
def test_cfg_job_with_a_bad_override_is_one_line(launch) -> None:
    result = launch("--cfg", "job", "export.points=-3")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: export.points: must be at least 0, got -3\n"
