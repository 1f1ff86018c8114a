"""``united.toml``: sections declared by plugins as frozen dataclasses, validated strictly.

A plugin's ``Config`` dataclass is the only place its defaults live (go-libp2p's
``defaults.go`` rule). Each field may carry metadata made with :func:`setting`:
a help line (written into ``united init`` output) and bounds or choices.

Every problem is a :class:`ConfigError` that names the file, the section and the
key; the CLI prints it (one line) and exits with status 2. Beyond each field's type
and bounds, every number must be finite (TOML allows ``nan`` and ``inf``, which
would pass any range check) and no string may contain a NUL character; the file
itself must be UTF-8 text.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .api import (
    ConfigError,
    ConfigSection,
    ConfigValueError,
    Settings,
    setting,
    validate_multiaddrs,
)

__all__ = [
    "ConfigError",
    "ConfigSection",
    "ConfigValueError",
    "Settings",
    "build_section",
    "build_settings",
    "read_toml",
    "render_section",
    "setting",
    "validate_multiaddrs",
]


# ---- type checking ------------------------------------------------------------------

_SCALARS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _describe(tp: Any) -> str:
    if tp in _SCALARS:
        return _SCALARS[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    return str(tp)


def _coerce(tp: Any, value: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise TypeError with a readable reason."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(args[0], value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
            # nan compares false with every bound, so it would pass any range check.
            if not math.isfinite(number):
                raise ValueError(f"must be a finite number, not {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            if "\0" in value:
                raise ValueError(f"must not contain a NUL character: {value!r}")
            return value
    elif origin is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(value, list):
            return tuple(_coerce(item, v) for v in value)
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported setting type {tp!r}")
    raise TypeError(f"must be {_describe(tp)}, not {type(value).__name__} {value!r}")


def _check_bounds(f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if meta.get("choices") is not None and v not in meta["choices"]:
            options = ", ".join(repr(c) for c in meta["choices"])
            raise ValueError(f"must be one of {options}, not {v!r}")
        if meta.get("min") is not None and v < meta["min"]:
            raise ValueError(f"must be >= {meta['min']}, not {v!r}")
        if meta.get("max") is not None and v > meta["max"]:
            raise ValueError(f"must be <= {meta['max']}, not {v!r}")


def build_section(section: ConfigSection, raw: Mapping[str, Any]) -> Any:
    """Validate ``raw`` against the section schema; return the frozen instance."""
    schema = section.schema
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table", section=section.name)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "(none)"
        raise ConfigError(
            f"unknown key {unknown[0]!r}; keys of [{section.name}] are: {known}",
            section=section.name,
            key=unknown[0],
        )
    values = {}
    for name, value in raw.items():
        try:
            values[name] = _coerce(hints[name], value)
            _check_bounds(fields[name], values[name])
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc), section=section.name, key=name) from None
    instance = schema(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigValueError as exc:
            raise ConfigError(str(exc), section=section.name, key=exc.key) from None
        except ValueError as exc:
            raise ConfigError(str(exc), section=section.name) from None
    return instance


def _looks_like_utf16(data: bytes) -> bool:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    head = data[: min(len(data), 64) // 2 * 2]
    evens, odds = head[0::2], head[1::2]
    return len(head) >= 4 and ((all(evens) and not any(odds)) or (all(odds) and not any(evens)))


def _decode(data: bytes) -> str:
    """The file's text; ValueError with a one-line reason unless it is UTF-8."""
    if _looks_like_utf16(data):
        raise ValueError("is UTF-16 text, not UTF-8; save it as UTF-8")
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ValueError(f"is not a text file (NUL byte on line {line})")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # tolerate a UTF-8 BOM
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        return tomllib.loads(_decode(data))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=path) from None
    except ValueError as exc:
        raise ConfigError(str(exc), file=path) from None


def build_settings(
    path: Path,
    raw: Mapping[str, Any],
    declared: Mapping[str, ConfigSection],
    available_sections: Iterable[str] = (),
) -> tuple[Settings, list[str]]:
    """Validate every section of ``raw``; return the settings and warnings.

    ``declared`` are the sections of enabled plugins (and the core);
    ``available_sections`` are the names of sections that installed-but-disabled
    plugins may declare: those are skipped with a warning, anything else is an error.
    """
    warnings = []
    available = set(available_sections)
    for name, value in raw.items():
        if name in declared:
            continue
        if name in available:
            warnings.append(f"{path}: [{name}] belongs to a plugin that is not enabled; ignored")
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"unknown top-level key {name!r}", file=path, key=name)
        known = ", ".join(sorted(declared))
        raise ConfigError(
            f"unknown section; no available plugin declares it (sections: {known})",
            file=path,
            section=name,
        )
    sections = {}
    for name, section in declared.items():
        try:
            sections[name] = build_section(section, raw.get(name, {}))
        except ConfigError as exc:
            raise exc.located(path) from None
    return Settings(path=path.resolve(), sections=sections), warnings


# ---- rendering (``united init``) ------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r}")


def render_section(section: ConfigSection, overrides: Mapping[str, Any]) -> str:
    """A commented TOML table: preset values active, every other key at its default."""
    lines = [f"[{section.name}]"]
    if section.description:
        lines.insert(0, f"# {section.description}")
    for f in dataclasses.fields(section.schema):
        help_text = f.metadata.get("help", "")
        default = f.default
        if f.name in overrides:
            lines.append(f"# {help_text} (default: {toml_value(default)})".replace("#  (", "# ("))
            lines.append(f"{f.name} = {toml_value(overrides[f.name])}")
        else:
            if help_text:
                lines.append(f"# {help_text}")
            lines.append(f"# {f.name} = {toml_value(default)}")
    return "\n".join(lines) + "\n"
