"""``python launch.py --cfg job`` with comments: the composed config, each documented key followed by its one-line
comment. Hydra prints ``--cfg`` without any; the comments come from where the keys are defined: the typed
dataclasses of systems/config.py (a field's trailing comment and its continuation lines, or the comment block
above it) and the YAML files of the chosen config group options (``key: value  # comment``; a file's header names
the group's key itself)."""
from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from core.errors import InputError, one_line

Comments = dict[tuple[str, ...], str]  # key path -> one-line comment
_YAML_KEY = re.compile(r"^( *)(- )?([A-Za-z_][\w-]*):(?: |$)")
_FIELD = re.compile(r"^    ([A-Za-z_]\w*)\s*:")


class JobConfigRequest(NamedTuple):
    """``--cfg job`` asked on the command line: its overrides and whether ``--resolve`` was given."""

    overrides: list[str]
    resolve: bool


def job_config_request(args: list[str]) -> JobConfigRequest | None:
    """The request when ``args`` (the command line without the program) ask for ``--cfg job`` (``-c job``,
    ``--cfg=job``) and nothing else of Hydra's (``--package``, other ``--cfg`` values, ``--help``, ...); else None."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        if args[i] in ("--cfg", "-c") and i + 1 < len(args):
            flags.append(f"--cfg={args[i + 1]}")
            i += 2
            continue
        (flags if args[i].startswith("-") else overrides).append(args[i])
        i += 1
    if "--cfg=job" not in flags or set(flags) - {"--cfg=job", "--resolve", "-m", "--multirun"}:
        return None
    return JobConfigRequest(overrides, "--resolve" in flags)


def _one_line(lines: list[str]) -> str:
    return " ".join(" ".join(lines).split())


def dataclass_comments(cls: type) -> dict[str, str]:
    """Field name -> one-line comment of a dataclass and its bases (the subclass's wins): the field's trailing
    comment with the comment lines continuing it (aligned under it, or ``#`` followed by spaces), else the block of
    comment lines right above the field."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            comments.update(_class_comments(klass))
    return comments


@lru_cache(maxsize=None)
def _class_comments(klass: type) -> dict[str, str]:
    """:func:`dataclass_comments` of the fields ``klass`` itself declares."""
    try:
        source = inspect.getsource(klass)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    line_comments = {}  # line number (0-based) -> (column of '#', text)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line_comments[token.start[0] - 1] = (token.start[1], token.string[1:])
    own = {f.name for f in dataclasses.fields(klass)} & set(vars(klass).get("__annotations__", {}))
    comments: dict[str, str] = {}
    block: list[str] = []  # comment-only lines above the next field
    field = None  # (name, column of its trailing comment, its comment lines) while continuation lines may follow
    for number, line in enumerate(lines):
        comment_only = line.strip().startswith("#")
        if comment_only and field is not None and number in line_comments:
            column, text = line_comments[number]
            if column == field[1] or text.startswith("  "):
                field[2].append(text)
                continue
        if field is not None:
            comments[field[0]] = _one_line(field[2])
            field = None
        match = _FIELD.match(line)
        if comment_only:
            block.append(line_comments.get(number, (0, ""))[1])
        elif match and match.group(1) in own:
            if number in line_comments:
                field = (match.group(1), line_comments[number][0], [line_comments[number][1]])
            elif block:
                comments[match.group(1)] = _one_line(block)
            block = []
        else:
            block = []
    if field is not None:
        comments[field[0]] = _one_line(field[2])
    return comments


def docstring_sentence(cls: Any) -> str | None:
    """The first sentence of a dataclass's own docstring, on one line (None without one: the docstring that
    ``dataclass`` makes up, ``Name(field: type, ...)``, does not count)."""
    doc = getattr(cls, "__doc__", None) if dataclasses.is_dataclass(cls) else None
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    return _first_sentence(doc.strip().split("\n\n")[0].splitlines())


def _first_sentence(lines: list[str]) -> str:
    """The first sentence of a paragraph given as lines, on one line."""
    return re.split(r"(?<=\.)\s", _one_line(lines), maxsplit=1)[0]


def yaml_comments(text: str, prefix: tuple[str, ...] = ()) -> Comments:
    """Key path (under ``prefix``) -> one-line comment of a YAML file's ``key: value  # comment`` lines (with the
    comment lines continuing them, as in :func:`dataclass_comments`) or of a comment block right above a key; the
    file's header comment (before its first key, ``# @package`` lines left out) is ``prefix``'s own, its first
    sentence. Keys in lists and under ``defaults`` are not documented."""
    comments: Comments = {}
    stack: list[str] = []
    block: list[str] = []
    header = True
    last = None  # (path, column of its trailing comment, its comment lines) while continuation lines may follow
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            column, comment = line.index("#"), stripped[1:]
            if last is not None and (column == last[1] or comment.startswith("  ")):
                last[2].append(comment)
                comments[last[0]] = _one_line(last[2])
            elif not stripped.startswith("# @package"):
                last = None
                block.append(comment)
            continue
        last = None
        match = _YAML_KEY.match(line)
        if header:
            if prefix and block and prefix not in comments:
                comments[prefix] = _first_sentence(block)
            block, header = [], not match
        if not match:
            block = []
            continue
        stack = stack[:len(match.group(1)) // 2] + ["-" if match.group(2) else match.group(3)]
        path = (*prefix, *stack)
        trailing = re.search(r"\s#\s?(.*)$", line[match.end():])
        if "-" not in stack and stack[0] != "defaults":
            if trailing:
                last = (path, match.end() + trailing.start() + 1, [trailing.group(1)])
                comments[path] = _one_line(last[2])
            elif block:
                comments[path] = _one_line(block)
        block = []
    return comments


def config_comments(cfg: DictConfig, config_dir: Path, choices: dict[str, Any]) -> Comments:
    """Key path -> one-line comment for every documented key of a composed config: the YAML files of the chosen
    group options (``choices``: group -> option; their package is the group, or the global one they declare), then
    the typed sections' dataclasses, which win where both document a key."""
    comments: Comments = {}
    for group, option in choices.items():
        path = config_dir / group / f"{option}.yaml"
        if option is None or group.startswith("hydra") or not path.is_file():
            continue
        text = path.read_text()
        comments.update(yaml_comments(text, () if "# @package _global_" in text else tuple(group.split("/"))))
    comments.update(yaml_comments((config_dir / "config.yaml").read_text()))

    def walk(node: DictConfig, path: tuple[str, ...]) -> None:
        schema = OmegaConf.get_type(node)
        fields = dataclass_comments(schema) if dataclasses.is_dataclass(schema) else {}
        for key in node.keys():
            child = node._get_node(key)
            if str(key) in fields:
                comments[(*path, str(key))] = fields[str(key)]
            elif isinstance(child, DictConfig) and (*path, str(key)) not in comments:
                doc = docstring_sentence(OmegaConf.get_type(child))
                if doc:
                    comments[(*path, str(key))] = doc
            if isinstance(child, DictConfig):
                walk(child, (*path, str(key)))

    walk(cfg, ())
    return comments


def commented_yaml(cfg: DictConfig, comments: Comments, resolve: bool = False) -> str:
    """``OmegaConf.to_yaml(cfg)`` (what Hydra's ``--cfg job`` prints) with ``  # comment`` after each key line
    whose key path has a comment."""
    out, stack = [], []
    for line in OmegaConf.to_yaml(cfg, resolve=resolve).splitlines():
        match = _YAML_KEY.match(line)
        if match:
            stack = stack[:len(match.group(1)) // 2] + ["-" if match.group(2) else match.group(3)]
            comment = comments.get(tuple(stack))
            if comment and not match.group(2):
                line = f"{line}  # {comment}"
        out.append(line)
    return "\n".join(out) + "\n"


def job_config_text(config_dir: Path, request: JobConfigRequest) -> str:
    """The composed config of ``request``'s overrides as YAML with the comments of :func:`config_comments`.

    Raises:
        InputError: the overrides do not compose.
    """
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose("config", overrides=[o for o in request.overrides if not o.startswith("hydra")],
                          return_hydra_config=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
        with open_dict(cfg):  # the job's config, as Hydra prints it: everything but the hydra node
            del cfg["hydra"]
        return commented_yaml(cfg, config_comments(cfg, config_dir, choices), request.resolve)
    except (HydraException, OmegaConfBaseException) as err:
        raise InputError("command line", one_line(str(err), type(err).__name__)) from err
