"""Saved configs are data: the allow-list of targets, what the command line and the trust flag free, and the one build()."""
from __future__ import annotations

import pytest

from core.errors import InputError
from systems import trust


@pytest.fixture(autouse=True)
def untrusted():
    trust.trust_command_line([], False)
    yield
    trust.trust_command_line([], False)


@pytest.mark.parametrize("target", ["torch.optim.AdamW", "torch.optim.lr_scheduler.LambdaLR", "pytorch_lightning.Trainer",
                                    "pytorch_lightning.callbacks.ModelCheckpoint", "pytorch_lightning.loggers.TensorBoardLogger",
                                    "models.cameras.FixedCameras", "datasets.npz.load_npz_scene", "systems.schedules.warmup_decay",
                                    "tools.summarize.SweepSummary"])
def test_our_modules_optimisers_and_lightning_parts_are_allowed(target):
    assert trust.allowed_target(target)


@pytest.mark.parametrize("target", ["os.system", "builtins.exec", "torch.load", "pathlib.Path.write_text", "subprocess.run",
                                    "systems.run_dir.shutil.rmtree", "systems.callbacks.os.system", "torch.optim.adam.torch.load",
                                    "pytorch_lightning.callbacks.model_checkpoint.os.remove", None, 3])
def test_other_targets_and_names_reached_through_allowed_modules_are_not(target):
    assert not trust.allowed_target(target)


def test_only_the_command_line_or_the_flag_frees_a_target(tmp_path):
    node = {"callbacks": {"x": {"_target_": "pathlib.Path.write_text", "self": {"_target_": "pathlib.Path", "_args_": ["f"]}}}}
    with pytest.raises(InputError, match=r"^callbacks\.x\._target_: 'pathlib.Path.write_text' from RUN is not an allowed .*"
                                         r"pass trust_run_targets=true"):
        trust.check_run_targets(node, "RUN")
    trust.trust_command_line(["+callbacks.x._target_=pathlib.Path.write_text", "+y={_target_:pathlib.Path}"], False)
    trust.check_run_targets(node, "RUN")  # both typed on the command line
    trust.trust_command_line([], True)
    trust.check_run_targets({"a": {"_target_": "os.system"}}, "RUN")


def test_saved_overrides_are_checked_before_anything_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    crafted = f"+callbacks.x={{_target_:pathlib.Path.write_text,self:{{_target_:pathlib.Path,_args_:['{marker}']}},data:hi}}"
    with pytest.raises(InputError, match="callbacks.x._target_"):
        trust.check_saved_overrides(["seed=1", crafted], "overrides.yaml")
    with pytest.raises(InputError, match="'hydra.callbacks.x'"):
        trust.check_saved_overrides(["hydra.callbacks.x={_target_:tools.summarize.SweepSummary}"], "overrides.yaml")
    with pytest.raises(InputError, match="^overrides.yaml: not overrides that Hydra reads"):
        trust.check_saved_overrides(["a={b"], "overrides.yaml")
    trust.check_saved_overrides(["seed=1", "dataset=dtu", "system.optimizer._target_=torch.optim.AdamW"], "overrides.yaml")
    (tmp_path / "overrides.yaml").write_text("{a: 1}\n")
    with pytest.raises(InputError, match="not a list of key=value overrides"):
        trust.read_saved_overrides(tmp_path / "overrides.yaml")
    assert not marker.exists()


def test_build_checks_the_whole_tree_and_passes_our_errors_through():
    with pytest.raises(InputError, match=r"^step\.inner\._target_: 'os\.getcwd'"):
        trust.build({"_target_": "systems.schedules.scheduled", "spec": 1.0, "step": {"inner": {"_target_": "os.getcwd"}}}, "RUN")
    with pytest.raises(InputError, match="unknown shape 'cube'"):  # not wrapped in Hydra's InstantiationException
        trust.build({"_target_": "datasets.synthetic.load_synthetic_scene", "cache_dir": "unused", "shape": "cube"})
    assert trust.build({"_target_": "systems.schedules.scheduled", "spec": 2.5, "step": 3}) == 2.5
