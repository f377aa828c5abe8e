"""Saved configs are data, not code: the one function that turns a ``_target_`` node into an object, and
the allow-list it checks first.

A run folder someone shares (its ``.hydra/overrides.yaml``, re-applied by ``resume=``; its ``config.yaml``,
read by ``mode=transfer``) may name any ``_target_``, and Hydra would import and call it. Every object is
therefore built by :func:`build`, which refuses a target outside :data:`ALLOWED_MODULES` /
:data:`ALLOWED_NAMES` unless the user typed it on their own command line (:func:`trust_command_line`) or passed
``trust_run_targets=true``. A target is judged by the object it resolves to (its ``__module__``), so a name
reached through one of our modules (``systems.run_dir.shutil.rmtree``) is refused too.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException, OverrideParseException
from hydra._internal.utils import _locate
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from core.errors import InputError

# Packages whose classes and functions a saved config may name (ours, optimisers and LR schedulers,
# Lightning's callbacks and loggers), and single names besides.
ALLOWED_MODULES = ("models", "datasets", "systems", "tools", "torch.optim", "pytorch_lightning.callbacks",
                   "pytorch_lightning.loggers", "lightning.pytorch.callbacks", "lightning.pytorch.loggers")
ALLOWED_NAMES = frozenset({"pytorch_lightning.Trainer", "pytorch_lightning.trainer.trainer.Trainer"})
TRUST_FLAG = "trust_run_targets=true"


@dataclass
class Trust:
    """What this process trusts without checking: the targets the user typed on its command line (``free``),
    and everything with the trust flag (``all``); set by :func:`trust_command_line`."""

    free: set[str] = field(default_factory=set)
    all: bool = False


_trust = Trust()


def _in(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def allowed_target(name: Any) -> bool:
    """Whether the ``_target_`` string ``name`` is in the allow-list: its dotted name and the module that
    defines the object it resolves to both lie in :data:`ALLOWED_MODULES`, or it is one of :data:`ALLOWED_NAMES`."""
    if not isinstance(name, str):
        return False
    if name in ALLOWED_NAMES:
        return True
    if not _in(name.rsplit(".", 1)[0], ALLOWED_MODULES):
        return False
    try:
        target = _locate(name)
    except Exception:  # not importable: instantiate reports it, nothing runs
        return True
    module = getattr(target, "__module__", None) or ""
    return _in(module, ALLOWED_MODULES) or f"{module}.{getattr(target, '__qualname__', '')}" in ALLOWED_NAMES


def targets(node: Any, key: str = "") -> list[tuple[str, Any]]:
    """``(full key, target)`` of every ``_target_`` in a config tree (plain containers or OmegaConf, unresolved)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = dataclasses.asdict(node)
    found: list[tuple[str, Any]] = []
    if isinstance(node, list):
        for i, item in enumerate(node):
            found += targets(item, f"{key}[{i}]")
    elif isinstance(node, dict):
        for name, value in node.items():
            full = f"{key}.{name}" if key else str(name)
            found += [(full, value)] if name == "_target_" else targets(value, full)
    return found


def refusal(key: str, target: Any, origin: str) -> InputError:
    """The one-line error for a ``_target_`` outside the allow-list."""
    return InputError(key, f"{target!r} from {origin} is not an allowed target (our models/datasets/systems/tools, torch.optim, "
                           f"Lightning callbacks, loggers and Trainer); pass {TRUST_FLAG} if you trust that run")


def check_run_targets(node: Any, origin: str, key: str = "", free: Iterable[str] = ()) -> None:
    """Refuse (InputError) a ``_target_`` of ``node`` that is neither allowed nor in ``free`` nor trusted;
    ``origin`` (a file) names where the config came from."""
    free = set(free) | _trust.free
    for full, target in targets(node, key):
        if not (_trust.all or target in free or allowed_target(target)):
            raise refusal(full, target, origin)


def read_saved_overrides(path: Path) -> list[str]:
    """The overrides a run saved (``.hydra/overrides.yaml``, a list of ``key=value`` strings); [] without the file."""
    if not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(path, f"not readable YAML ({type(err).__name__})") from err
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise InputError(path, "not a list of key=value overrides")
    return saved


def check_saved_overrides(overrides: list[str], origin: str) -> None:
    """Refuse (InputError) saved overrides (a run's ``.hydra/overrides.yaml``) that would run code: a
    ``_target_`` outside the allow-list, or a ``hydra.*`` key (Hydra saves those elsewhere; they can name
    callbacks and plugins), unless trusted."""
    hydra_key = next((o for o in overrides if o.lstrip("+~").startswith(("hydra.", "hydra/"))), None)
    if hydra_key is not None and not _trust.all:
        raise InputError(origin, f"sets {hydra_key.split('=', 1)[0]!r}, which a run does not save there; "
                                 f"pass {TRUST_FLAG} if you trust that run")
    try:
        values = override_values(overrides)
    except OverrideParseException as err:
        raise InputError(origin, f"not overrides that Hydra reads ({' '.join(str(err).split())})") from err
    check_run_targets(values, origin)


def trust_command_line(overrides: Iterable[str], trust_all: bool) -> None:
    """Let :func:`build` make the targets named in ``overrides`` (this process's command line) and, with
    ``trust_all`` (``trust_run_targets=true``), any target."""
    _trust.all = bool(trust_all)
    _trust.free = {target for _, target in targets(override_values(overrides))}


def override_values(overrides: Iterable[str]) -> dict[str, Any]:
    """``{key: value}`` of ``key=value`` overrides, values parsed as Hydra does (dicts and lists)."""
    values: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")]):
        if override.is_delete() or override.is_sweep_override():
            continue
        key = override.key_or_group
        values[key] = {"_target_": override.value()} if key.split(".")[-1] == "_target_" else override.value()
    return values


def build(node: Any, origin: str = "the config", **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` after :func:`check_run_targets`; an InputError raised by the
    target comes out as itself, not wrapped in Hydra's InstantiationException."""
    check_run_targets(node, origin)
    for name, value in kwargs.items():
        if isinstance(value, (dict, DictConfig)):
            check_run_targets(value, origin, name)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, InputError):
            raise err.__cause__ from None
        raise
