"""The reflective checks of a composed config, run by launch.py before a run directory exists:
:func:`check_targets` holds every ``_target_`` node against its target's signature, :func:`check_sections`
every typed section (systems/config.py) against its dataclass, ranges included."""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from core.errors import InputError


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a plain config value (None, bool, int, float, str, list, dict) fits ``annotation``;
    annotations that are not plain types (modules, tensors, ...) accept anything."""
    if annotation is Any or (isinstance(value, dict) and "_target_" in value):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    annotation = origin or annotation
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if annotation in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True


def check_targets(node: Any, key: str = "", ignore: Mapping[str, Iterable[str]] | None = None) -> None:
    """Check every ``_target_`` node of a resolved config (plain containers) against its target's
    signature: no unknown key (unless it takes ``**kwargs``) and every value of a plainly typed
    argument of the right type. ``ignore`` maps a node's key to keys it may hold besides arguments.

    Raises:
        InputError: naming the full key and the problem.
    """
    ignore = ignore or {}
    if isinstance(node, list):
        for i, item in enumerate(node):
            check_targets(item, f"{key}[{i}]", ignore)
        return
    if not isinstance(node, dict):
        return
    if "_target_" in node:
        try:
            target = get_method(node["_target_"]) if "." in str(node["_target_"]) else None
        except Exception as err:  # Hydra wraps import errors of every kind
            raise InputError(f"{key}._target_", f"cannot import {node['_target_']!r} ({err.__cause__ or err})") from err
        function = target.__init__ if isinstance(target, type) else target
        parameters = inspect.signature(target).parameters
        try:
            hints = typing.get_type_hints(function)
        except NameError:  # an annotation naming a type imported for type checking only: no type checks
            hints = {}
        takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
        for name, value in node.items():
            full = f"{key}.{name}" if key else name
            if name.startswith("_") or name in set(ignore.get(key, ())):
                continue
            if name not in parameters:
                if not takes_any:
                    choices = ", ".join(p for p in parameters if p not in ("self", "args", "kwargs"))
                    raise InputError(full, f"unknown key for {node['_target_']}; its arguments are {choices}")
                continue
            if name in hints and not _matches(value, hints[name]):
                raise InputError(full, f"expected {_type_name(hints[name])}, got {value!r}")
    for name, value in node.items():
        check_targets(value, f"{key}.{name}" if key else name, ignore)


def _type_name(annotation: Any) -> str:
    """A short readable name of a type annotation (``int | None``)."""
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_sections(node: DictConfig, key: str = "") -> None:
    """Refuse keys added (``+key=value``) to a typed section of a composed config: Hydra lets them
    into a structured node, where nothing would read them. A typed ``_target_`` object (``trainer``,
    ``system.optimizer``) takes them: :func:`check_targets` checks them against its signature.
    Then build each typed section below the top level as its dataclass, deepest first, so that its
    ``__post_init__`` range checks (which OmegaConf does not run when composing) refuse a bad value now."""
    schema = OmegaConf.get_type(node)
    typed = dataclasses.is_dataclass(schema) and "_target_" not in node
    fields = {f.name for f in dataclasses.fields(schema)} if typed else None
    for name in node.keys():
        full = f"{key}.{name}" if key else str(name)
        if fields is not None and name not in fields:
            raise InputError(full, f"unknown key; {schema.__name__} has {', '.join(sorted(fields))}")
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            check_sections(child, full)
    if key and dataclasses.is_dataclass(schema) and hasattr(schema, "__post_init__"):
        try:
            OmegaConf.to_object(node)
        except InputError as err:  # a top-level section names its own key (systems.config.field_key)
            where = err.where if str(err.where).startswith(f"{key}.") else f"{key}.{err.where}"
            raise InputError(where, err.problem) from err
        except Exception:  # keys added to a _target_ object, a missing value: reported by the other checks
            pass
