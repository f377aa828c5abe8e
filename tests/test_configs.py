"""Every option of every config group, and every experiment, composes and passes launch.py's start-up checks;
no constructor default disagrees with the composed configs."""
import inspect
from typing import Any, Iterator

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from systems.assembly import CONFIG_DIR, DATASET_META, check_config, compose_config

GROUP_OPTIONS = [f"{group.name}={option.stem}" for group in sorted(CONFIG_DIR.iterdir()) if group.is_dir()
                 for option in sorted(group.glob("*.yaml"))]


@pytest.mark.parametrize("override", GROUP_OPTIONS)
def test_every_group_option_composes_and_checks(override: str) -> None:
    check_config([override])  # raises InputError on unknown keys, wrong types or bad _target_ arguments


def test_experiments_set_what_their_names_say() -> None:
    dtu = compose_config(["experiment=dtu-neus", "scan=37"])
    assert dtu.dataset.root.endswith("dtu/scan37") and dtu.system.model._target_ == "models.neus.NeuSModel"
    assert (dtu.trainer.max_time, dtu.trainer.max_steps, dtu.system.eval_downscale) == ("00:00:20:00", None, 2)  # a 20-minute budget
    gpu = compose_config(["experiment=dtu-neus-gpu"])
    assert gpu.dataset.root.endswith("dtu/scan24") and gpu.encoder.finest_resolution == 2048
    assert (gpu.encoder.n_levels, gpu.encoder.log2_table_size, gpu.system.rays.target_samples) == (16, 19, 262144)
    idr = compose_config(["experiment=idr-noisy-cameras", "trainer.max_steps=7"])
    assert idr.system.model._target_ == "models.idr.IDRModel" and idr.camera._target_.endswith("TrainableCameras")
    assert (idr.camera.noise.rotation_deg, idr.encoder.window_end, idr.trainer.max_steps) == (3, 1000, 7)  # the command line wins
    assert compose_config([]).get("experiment") is None


def test_runs_of_a_scene_folder_are_named_after_it() -> None:
    assert compose_config(["dataset=ngp", "dataset.root=/data/scenes/fox/"]).name == "neus-fox"
    assert compose_config(["dataset=colmap", "dataset.root=scenes/mine", "system=idr"]).name == "idr-mine"
    assert compose_config(["dataset=ngp"]).name == "neus-ngp"  # root not given yet: load_scene asks for it


# Constructor defaults that still disagree with a config option (issue 26, to be removed one by one): each is a
# (target, parameter) whose default differs from the value some group option composes. The test fails on any
# other disagreement, and on an entry here that no longer disagrees (then delete it).
PENDING = {
    ("models.encoders.HashGridEncoder", "backend"), ("models.encoders.HashGridEncoder", "compile"),
    ("models.encoders.HashGridEncoder", "steps_per_level"),
    ("models.encoders.NFFBEncoder", "backend"), ("models.encoders.NFFBEncoder", "compile"),
    ("models.encoders.NFFBEncoder", "steps_per_level"),
    ("models.encoders.StyleModNFFBEncoder", "backend"), ("models.encoders.StyleModNFFBEncoder", "compile"),
    ("models.encoders.StyleModNFFBEncoder", "steps_per_level"),
    ("models.fields.ColorField", "feature_dim"), ("models.fields.ColorField", "hidden_dim"), ("models.fields.ColorField", "n_layers"),
    ("models.fields.SDFField", "feature_dim"), ("models.fields.SDFField", "init_radius"),
    ("models.ray_tracing.SphereTracer", "n_line_search"),
    ("systems.idr.IDRSystem", "n_rays"),  # IDRConfig's, which system=idr_paper doubles
}


def constructor_defaults(target: Any) -> dict[str, Any]:
    """{parameter: default} of a function or class, following ``**kwargs`` up a class's bases (no default: absent)."""
    defaults: dict[str, Any] = {}
    for function in [c.__init__ for c in target.__mro__ if c is not object] if isinstance(target, type) else [target]:
        parameters = inspect.signature(function).parameters.values()
        for p in parameters:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in defaults:
                defaults[p.name] = p.default
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return {k: v for k, v in defaults.items() if v is not inspect.Parameter.empty}


def our_targets(node: Any, key: str = "") -> Iterator[tuple[str, dict]]:
    """(key, node) of every ``_target_`` node of a resolved config that names our code (models, systems, datasets)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from our_targets(item, f"{key}[{i}]")
    if not isinstance(node, dict):
        return
    if str(node.get("_target_", "")).split(".")[0] in ("models", "systems", "datasets"):
        yield key, node
    for name, value in node.items():
        yield from our_targets(value, f"{key}.{name}" if key else name)


def disagreements() -> set[tuple[str, str]]:
    """The (target, parameter) pairs whose constructor default differs from the value a group option composes
    (experiments left out: they are recipes of overrides, as the command line is). A None default (documented
    as "unset") against a mapping is a typed section the constructor builds from its dataclass: one source."""
    found = set()
    for override in GROUP_OPTIONS:
        if override.startswith("experiment="):
            continue
        container = OmegaConf.to_container(compose_config([override]), resolve=True)
        for key, node in our_targets(container):
            defaults = constructor_defaults(get_method(node["_target_"]))
            for name, value in node.items():
                if name.startswith("_") or name not in defaults or (key == "dataset" and name in DATASET_META):
                    continue
                default = defaults[name]
                if default is None or default == value:  # None: the constructor's "unset" (a section: its dataclass)
                    continue
                found.add((node["_target_"], name))
    return found


def test_constructor_defaults_never_disagree_with_the_composed_configs() -> None:
    assert disagreements() == PENDING


def test_the_defaults_check_finds_a_disagreeing_default(monkeypatch) -> None:
    from models.fields import InverseVariance

    monkeypatch.setattr(InverseVariance.__init__, "__defaults__", (0.5,))  # configs/system/neus.yaml says 0.3
    assert disagreements() - PENDING == {("models.fields.InverseVariance", "init_value")}
