"""Typed configs: YAML files plus ``key=value`` overrides, checked when they are loaded.

Every recipe has one pydantic config class. Each field carries its default and a docstring-like
``description``; unknown or ill-typed keys fail at load time with the dotted key's name, so a typo
never silently trains the wrong thing::

    cfg = load_config(SFTConfig, "sft.yaml", ["train.lr=3e-4", "data.max_length=512"])
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="StrictModel")


class ConfigError(ValueError):
    """A config that cannot be used; the message names every offending key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # A section given in part is completed from the recipe's own default for it (see
    # _with_section_defaults); False for a section that names one choice among several (a
    # reward's source), where what the user gives replaces the default whole.
    partial_keeps_default: ClassVar[bool] = True


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into its key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` override into a nested dict (in place, also returned)."""
    for override in overrides:
        path, value = parse_override(override)
        node = data
        for index, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                dotted = ".".join(path[: index + 1])
                raise ConfigError(f"override {override!r}: {dotted} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping: plain YAML keeps the last
    one silently, so a second ``train:`` block would drop the whole first one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges by design
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class refuses it with its own message
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first_line[key]}); YAML would "
                    "keep only the last one",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, naming the file (and line) when it is not one, or when a key is
    given twice in one mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or error
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    return data


def preset_path(recipe: str, preset: str) -> Path:
    """Where the packaged preset ``<recipe>_<preset>.yaml`` lives."""
    path = Path(str(resources.files("rlhf") / "presets" / f"{recipe}_{preset}.yaml"))
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob(f"{recipe}_*.yaml"))
        names = ", ".join(name.removeprefix(f"{recipe}_") for name in known) or "none"
        raise ConfigError(f"no preset {preset!r} for {recipe} (presets: {names})")
    return path


def _format_validation_error(error: ValidationError, source: str, cls: type[BaseModel]) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = _missing(cls, [str(part) for part in item["loc"]])
        else:
            message = item["msg"]
            if "input" in item and item["loc"]:  # a whole section's input is no help
                message += f" (got {item['input']!r})"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _missing(cls: type[BaseModel], path: list[str]) -> str:
    """The message for a missing key: "required", with what the key is and, for a section,
    the keys it needs. A config given as overrides alone meets this first, e.g. ``model:
    required (The model to fine-tune; e.g. model.path=...)``."""
    field = None
    for part in path:
        field = cls.model_fields.get(part) if isinstance(cls, type) else None
        if field is None:
            return "required"
        cls = field.annotation  # type: ignore[assignment]
    assert field is not None
    hints = []
    if field.description:
        hints.append(field.description.rstrip("."))
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        needed = [
            key for key, _, default, _ in describe_config(cls, f"{'.'.join(path)}.")
            if default == "required"
        ]  # fmt: skip
        if not needed and "path" in cls.model_fields:  # a model section: path or tiny
            needed = [f"{'.'.join(path)}.path"]
        if needed:
            hints.append("e.g. " + " ".join(f"{key}=..." for key in needed))
    return f"required ({'; '.join(hints)})" if hints else "required"


def validate_config(cls: type[C], data: Mapping[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a plain mapping, turning pydantic's errors into a :class:`ConfigError`."""
    try:
        return cls.model_validate(_with_section_defaults(cls, dict(data)))
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source, cls)) from None


def _with_section_defaults(cls: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each section it gives in part completed from the section's own default.

    A recipe may default a section to other values than its class does (GRPO's ``kl`` is
    β = 0.04 with k3 in the loss; the class says 0.05, k1, in the reward). Pydantic builds a
    section given in part (``kl.coef=0.1``) from the class's defaults, which would silently
    bring back k1 in the reward; the recipe's values are filled in first instead.
    """
    for name, field in cls.model_fields.items():
        value, section_class = data.get(name), field.annotation
        if not isinstance(value, Mapping):
            continue
        if not (isinstance(section_class, type) and issubclass(section_class, BaseModel)):
            continue
        section = dict(value)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel) and getattr(section_class, "partial_keeps_default", True):
            section = _deep_merge(default.model_dump(exclude_defaults=True), section)
        data[name] = _with_section_defaults(section_class, section)
    return data


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> C:
    """Load ``cls`` from an optional base mapping, then a YAML file, then ``key=value`` overrides."""
    data: dict[str, Any] = _deep_merge({}, dict(base or {}))
    sources = []
    if path is not None:
        data = _deep_merge(data, read_yaml(path))
        sources.append(str(path))
    apply_overrides(data, overrides)
    if overrides:
        sources.append("command-line overrides")
    return validate_config(cls, data, " + ".join(sources) or "defaults")


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
    return into


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` as ``{"train.lr": 1}``: every leaf by its dotted key."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten_config(value, prefix=f"{dotted}.")
        else:
            flat[dotted] = value
    return flat


def config_changes(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs, in key order; a key
    missing on one side has the value None there."""
    old, new = flatten_config(before), flatten_config(after)
    return [
        (key, old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def config_text(config: BaseModel) -> str:
    """The fully resolved config as YAML, every key written in the class's order: what a run
    writes next to its outputs, so that it can be rerun as it was."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(
            repr(arg) if isinstance(arg, str) else str(arg) for arg in annotation.__args__
        )
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def describe_config(
    cls: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None
) -> list[tuple[str, str, str, str]]:
    """Every leaf key of a config as ``(dotted key, type, default, description)`` rows.

    A section's defaults are those of the section's own default (``defaults``), not of its
    class: GRPO's ``kl`` section defaults to β = 0.04 and k3 where the class says 0.05 and k1,
    and ``--help`` must show what a run would use.
    """
    rows = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        if defaults is not None:
            has_default, value = True, getattr(defaults, name)
        elif field.is_required():
            has_default, value = False, None
        else:
            has_default, value = True, field.get_default(call_default_factory=True)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            section = value if isinstance(value, BaseModel) else None
            rows.extend(describe_config(annotation, prefix=f"{key}.", defaults=section))
            continue
        default = repr(value) if has_default else "required"
        rows.append((key, _type_name(annotation), default, field.description or ""))
    return rows


def config_help(cls: type[BaseModel]) -> str:
    """Plain-text table of every key, for ``--help``."""
    rows = describe_config(cls)
    width = max(len(row[0]) for row in rows)
    lines = []
    for key, type_name, default, description in rows:
        lines.append(f"{key.ljust(width)}  {description} [{type_name}; default {default}]")
    return "\n".join(lines)
