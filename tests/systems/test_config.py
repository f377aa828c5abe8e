"""Typed configuration: one source of defaults, and wrong types or unknown keys refused at start."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core.errors import InputError
from systems.assembly import UNCHECKED, check_config, compose_config
from systems.config import IDRConfig, NeuSConfig, NeuSLoss, Optim, as_section
from systems.validation import check_targets
from systems.idr import IDRSystem
from systems.neus import NeuSSystem

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("system, schema, cls", [("neus", NeuSConfig, NeuSSystem), ("idr", IDRConfig, IDRSystem)])
def test_yaml_code_and_schema_share_one_set_of_defaults(system, schema, cls):
    composed = compose_config([f"system={system}"]).system
    defaults = schema()
    parameters = inspect.signature(cls).parameters
    for field in dataclasses.fields(schema):
        if field.name in ("_target_", "model", "background"):
            continue
        value = getattr(defaults, field.name)
        expected = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        got = composed[field.name]
        assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == expected, field.name
        if field.name in parameters and dataclasses.is_dataclass(value):
            # a system built in a notebook without the section gets the same values
            default = parameters[field.name].default
            assert default is None, field.name
        elif field.name in parameters:
            assert parameters[field.name].default == value, field.name
    built = as_section(cls.optim_schema, None)
    assert dataclasses.asdict(built) == dataclasses.asdict(defaults.optim)


def test_sections_refuse_unknown_keys():
    assert as_section(NeuSLoss, {"mask": 0.0}).mask == 0.0
    with pytest.raises(TypeError, match="maks"):
        as_section(NeuSLoss, {"maks": 0.0})
    assert Optim(lr=0.5).group_lr("encoder") == 0.5 and Optim(lr_encoder=0.1).group_lr("encoder") == 0.1


def test_target_nodes_are_checked_against_their_signatures():
    node = {"geometry": {"_target_": "models.fields.SDFField", "encoder": {"_target_": "models.encoders.FrequencyEncoder"},
                         "hidden_dim": 64, "grad_type": "analytic", "fd_step": 1}}
    check_targets(node)  # an int is a valid float
    with pytest.raises(InputError, match="geometry.hidden_dim: expected int, got 'abc'"):
        check_targets({"geometry": {**node["geometry"], "hidden_dim": "abc"}})
    with pytest.raises(InputError, match="geometry.hiden_dim: unknown key for models.fields.SDFField"):
        check_targets({"geometry": {**node["geometry"], "hiden_dim": 32}})
    with pytest.raises(InputError, match="geometry.encoder.n_frequencies: expected int"):
        check_targets({"geometry": {**node["geometry"], "encoder": {"_target_": "models.encoders.FrequencyEncoder", "n_frequencies": 2.5}}})


@pytest.mark.parametrize("group", ["system", "dataset", "encoder", "camera"])
def test_every_group_option_composes_and_checks(group):
    for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
        check_config([f"{group}={option}"])
        check_targets(OmegaConf.to_container(compose_config([f"{group}={option}"]), resolve=True), ignore=UNCHECKED)


@pytest.mark.parametrize("override, key", [
    ("system.optim.lr=abc", "system.optim.lr"),
    ("system.optim.lr_encoder=abc", "system.optim.lr_encoder"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("system.optim.foo=1", "system.optim.foo"),
    ("+system.optim.foo=1", "system.optim.foo"),
    ("+system.loss.maks=1", "system.loss.maks"),
    ("+encoder.foo=1", "encoder.foo"),
    ("system.model.geometry.hidden_dim=abc", "system.model.geometry.hidden_dim"),
])
def test_wrong_types_and_unknown_keys_fail_at_start(override, key):
    with pytest.raises(InputError) as info:
        check_config([override])
    assert info.value.where == key and "\n" not in str(info.value)


def test_a_sweep_is_checked_option_by_option():
    check_config(["system.optim.lr=0.1,0.2", "encoder=choice(hashgrid,frequency)"])
    with pytest.raises(InputError, match="system.optim.lr"):
        check_config(["system.optim.lr=0.1,abc"])


@pytest.mark.parametrize("override, key, problem", [
    ("system.background_field.sh_degree=5", "system.background_field.sh_degree", "must be at most 4"),
    ("system.background_field.sh_degree=0", "system.background_field.sh_degree", "must be at least 1"),
    ("eval.protocol=dtu", "eval.protocol", "unknown value 'dtu'"),
    ("eval.protocol=dtu_official", "eval.dtu_dir", "needs eval.dtu_dir=DIR"),
    ("video.path=spiral", "video.path", "unknown value 'spiral'"),
    ("system=volsdf system.cos_anneal_steps=200", "system.cos_anneal_steps", "VolSDF has no cosine annealing"),
])
def test_section_values_are_checked_at_start(override, key, problem):
    """Value checks live in the sections' __post_init__, so a bad value stops before a run directory exists,
    named by its full key (a top-level section names its own, not twice)."""
    with pytest.raises(InputError) as info:
        check_config(override.split())
    assert info.value.where == key and problem in info.value.problem
