"""Load a device's YAML file into ``agent.config.Config``, reporting every problem on one line.

Each problem reads ``<file>: <key.path>: <what is wrong> (line N)``. The schema is walked generically
(dataclass fields and their type hints); cross-field rules live in ``agent.configrules``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from agent.config import Config
from agent.configpaths import normaliser_for
from agent.configrules import INVALID, RULES, Walk, dotted, format_problem
from agent.errors import ConfigError
from agent.yamlpos import KeyPath, YamlSyntaxError, load_yaml

DEFAULT_STATE_DIR = "/var/lib/catdog-agent"

# Sections declared without field metadata in agent.config; their README description.
_SECTION_DOCS = {
    "device": "this device",
    "camera": "where frames come from",
    "server": "the TF Serving REST server and the pinned model",
    "model": "how frames become tensors and outputs become labels (defaults: from /metadata)",
    "mqtt": "the MQTT broker, topics and credentials",
}
_SCALAR_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}
_PLACEHOLDERS: dict[Any, Any] = {bool: False, int: 0, float: 0.0, str: ""}


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate one device file; raise ConfigError listing every problem found."""
    source = os.fspath(path)
    absolute = os.path.abspath(source)
    text = _read_text(source)
    try:
        loaded = load_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError([format_problem(source, (), f"not valid YAML: {exc.message}", exc.line)]) from None
    walk = Walk(source=source, base_dir=os.path.dirname(absolute), lines=loaded.lines)
    for duplicate in loaded.duplicates:
        walk.add(duplicate.path, f"duplicate key {duplicate.path[-1]!r} (first at line {duplicate.first_line})",
                 line=duplicate.line)
    return dataclasses.replace(_parse(loaded.data, walk), path=absolute)


def parse_config(data: object, *, source: str, base_dir: Path,
                 lines: dict[tuple[str, ...], int] | None = None) -> Config:
    """Validate loaded YAML data; relative paths are taken from ``base_dir``; raise ConfigError."""
    return _parse(data, Walk(source=source, base_dir=str(base_dir), lines=dict(lines or {})))


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key.path, type, default, doc) for every YAML key in schema order, for the README."""
    rows: list[tuple[str, str, str, str]] = []
    _collect_rows(Config, (), rows)
    return rows


def _parse(data: object, walk: Walk) -> Config:
    if data is None:
        walk.add((), f"the file is empty; it needs at least the sections {_required_sections()}")
    elif not isinstance(data, dict):
        walk.add((), f"expected a mapping of sections ({_required_sections()}) at the top level, "
                     f"got {_describe(data)}")
    else:
        config = _build_section(Config, data, (), walk)
        if isinstance(config, Config) and not walk.found:
            return config if "state_dir" in data else dataclasses.replace(config, state_dir=_state_dir())
    raise ConfigError(walk.problems())


def _read_text(source: str) -> str:
    try:
        return Path(source).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        problem, line = f"cannot read the file: {exc.strerror or exc}", None
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start:exc.start + 1].hex()
        problem, line = f"not UTF-8 text (byte 0x{byte})", exc.object[:exc.start].count(b"\n") + 1
    raise ConfigError([format_problem(source, (), problem, line)])


def _state_dir() -> str:
    # systemd's StateDirectory= may list several directories, colon-separated; ours is the first.
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIR


# --- walking the schema -------------------------------------------------------------------------------

def _build_section(cls: type[Any], value: object, path: KeyPath, walk: Walk) -> Any:
    if value is None:
        value = {}  # a section whose keys are all commented out
    if not isinstance(value, dict):
        walk.add(path, f"expected a mapping, got {_describe(value)}")
        return INVALID
    fields = _yaml_fields(cls)
    _report_unknown_keys(value, [f.name for f in fields], path, walk)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for spec in fields:
        item = _field_value(spec, hints[spec.name], value, (*path, spec.name), walk)
        if item is INVALID and _is_required(spec):
            # A stand-in for a bad required key lets the rules about the other keys still run.
            item = _PLACEHOLDERS.get(hints[spec.name], INVALID)
        if item is not INVALID:
            kwargs[spec.name] = item
    if any(_is_required(spec) and spec.name not in kwargs for spec in fields):
        return INVALID
    section = cls(**kwargs)
    for check in RULES.get(path, ()):
        check(section, walk)
    return section


def _field_value(spec: dataclasses.Field[Any], hint: Any, section: dict[Any, Any], path: KeyPath,
                 walk: Walk) -> Any:
    if spec.name in section:
        return _convert_field(spec, hint, section[spec.name], path, walk)
    if _is_required(spec):
        walk.add(path, f"required {'section' if _section_class(hint) else 'key'} is missing")
    return INVALID


def _report_unknown_keys(value: dict[Any, Any], names: list[str], path: KeyPath, walk: Walk) -> None:
    for key in value:
        if key not in names:
            walk.add((*path, str(key)), f"unknown key{_suggestion(str(key), names)}")


def _suggestion(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    # The right key in the wrong section, e.g. `camera.threshold` for `model.threshold`.
    elsewhere = [row[0] for row in reference_rows() if row[0].rsplit(".", 1)[-1] == key]
    return f" (did you mean {' or '.join(map(repr, elsewhere))}?)" if 1 <= len(elsewhere) <= 2 else ""


def _convert_field(spec: dataclasses.Field[Any], hint: Any, raw: object, path: KeyPath, walk: Walk) -> Any:
    value = _convert(raw, hint, path, walk)
    if value is INVALID or value is None:
        return value
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        walk.add(path, f"must be one of {', '.join(choices)} (got {_describe(value)})")
        return INVALID
    normalise = normaliser_for(spec.name)
    return normalise(value, path, walk) if normalise else value


def _convert(value: object, hint: Any, path: KeyPath, walk: Walk) -> Any:
    if _is_dataclass_type(hint):
        return _build_section(hint, value, path, walk)
    if get_origin(hint) is Union:
        inner = _unwrap_optional(hint)
        # A present but empty optional section (`tls:`) means "on, with defaults".
        return None if value is None and not _section_class(inner) else _convert(value, inner, path, walk)
    if get_origin(hint) is tuple:
        return _convert_tuple(value, hint, path, walk)
    if hint not in _SCALAR_NAMES:
        raise TypeError(f"agent.config uses a type configload cannot read: {hint!r}")
    if _scalar_fits(value, hint):
        return float(value) if hint is float else value  # type: ignore[arg-type]
    walk.add(path, f"expected {_expected(hint, value)}, got {_describe(value)}{_quote_hint(hint, value)}")
    return INVALID


def _scalar_fits(value: object, hint: type) -> bool:
    if isinstance(value, bool):
        return hint is bool  # YAML's true is not 1
    if hint is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, hint)


def _convert_tuple(value: object, hint: Any, path: KeyPath, walk: Walk) -> Any:
    args = get_args(hint)
    variadic = len(args) == 2 and args[1] is Ellipsis
    if variadic and get_origin(args[0]) is tuple:
        return _convert_pairs(value, get_args(args[0]), path, walk)
    if not isinstance(value, list) or not (variadic or len(value) == len(args)):
        walk.add(path, f"expected {_expected(hint, value)}, got {_describe(value)}")
        return INVALID
    item_hints = [args[0]] * len(value) if variadic else list(args)
    items = [_convert(item, item_hint, (*path, f"[{index}]"), walk)
             for index, (item, item_hint) in enumerate(zip(value, item_hints))]
    return INVALID if any(item is INVALID for item in items) else tuple(items)


def _convert_pairs(value: object, args: tuple[Any, ...], path: KeyPath, walk: Walk) -> Any:
    """A YAML mapping of name: value (e.g. HTTP headers), kept as ((name, value), ...) in file order."""
    if not isinstance(value, dict):
        walk.add(path, f"expected a mapping of names to {_SCALAR_NAMES[args[1]]}s, got {_describe(value)}")
        return INVALID
    pairs = [(str(name), _convert(item, args[1], (*path, str(name)), walk)) for name, item in value.items()]
    return INVALID if any(item is INVALID for _name, item in pairs) else tuple(pairs)


# --- schema facts and wording ---------------------------------------------------------------------

def _hints(cls: type[Any]) -> dict[str, Any]:
    return get_type_hints(cls)


def _yaml_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [spec for spec in dataclasses.fields(cls) if not spec.metadata.get("internal")]


def _is_required(spec: dataclasses.Field[Any]) -> bool:
    no_default = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
    return bool(spec.metadata.get("required")) or no_default


def _required_sections() -> str:
    names = [spec.name for spec in _yaml_fields(Config) if _is_required(spec)]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _unwrap_optional(hint: Any) -> Any:
    return next(arg for arg in get_args(hint) if arg is not type(None))


def _section_class(hint: Any) -> type[Any] | None:
    if get_origin(hint) is Union:
        hint = _unwrap_optional(hint)
    return hint if _is_dataclass_type(hint) else None


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Union:
        return _type_name(_unwrap_optional(hint))
    if _section_class(hint):
        return "section"
    args = get_args(hint)
    if get_origin(hint) is not tuple:
        return _SCALAR_NAMES[hint]
    if args[-1] is not Ellipsis:
        return f"list of {len(args)} {_type_name(args[0])}s"
    if get_origin(args[0]) is tuple:
        return f"mapping of names to {_type_name(get_args(args[0])[1])}s"
    return f"list of {_type_name(args[0])}s"


def _expected(hint: Any, value: object) -> str:
    if hint is bool:
        return "true or false"
    if hint is float and isinstance(value, float):
        return "a finite number"
    name = _type_name(hint)
    return ("an " if name[0] in "aeiou" else "a ") + name


def _quote_hint(hint: Any, value: object) -> str:
    # `id: no` is false and `id: 0042` is 42 in YAML; a string that looks like something else needs quotes.
    return " (put it in quotes)" if hint is str and not isinstance(value, (dict, list, type(None))) else ""


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        text = json.dumps(value, default=str)
        return text if len(text) <= 40 else f"a list of {len(value)} items"
    return str(value)


def _collect_rows(cls: type[Any], prefix: KeyPath, rows: list[tuple[str, str, str, str]]) -> None:
    hints = _hints(cls)
    for spec in _yaml_fields(cls):
        hint = hints[spec.name]
        doc = spec.metadata.get("doc") or _SECTION_DOCS.get(spec.name, "")
        rows.append((dotted((*prefix, spec.name)), _type_name(hint), _default_text(spec, hint), doc))
        section = _section_class(hint)
        if section:
            _collect_rows(section, (*prefix, spec.name), rows)


def _default_text(spec: dataclasses.Field[Any], hint: Any) -> str:
    if _is_required(spec):
        return "required"
    if spec.default_factory is not dataclasses.MISSING:
        return ""  # a section: see its keys
    value = spec.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "{}" if "mapping" in _type_name(hint) else "[" + ", ".join(map(str, value)) + "]"
    if value in ("none", "required", ""):
        return f'"{value}"'  # a string default that reads like "no default" (camera.flip: none)
    return str(value)
