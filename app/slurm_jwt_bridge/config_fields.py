"""Settings declared once: the field that declares a key, the reader, the JSON Schema.

A setting is a dataclass field made by ``setting(default, doc, ge=, le=, choices=, check=)``.
``Reader`` walks the fields of a settings class to read a parsed TOML table (type, bounds and
check per key, one error line per mistake naming the key, unknown keys refused; a class's
``_validate(key, present)`` then checks what spans its keys); ``object_schema`` walks the same
fields to describe them as JSON Schema. The settings themselves are in settings.py.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# What the docs show for a key without a default value (an en dash).
NO_DEFAULT = "\u2013"


class SettingsError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


class Invalid(ValueError):
    """A field check's refusal; the reader puts the key in front."""


@dataclass(frozen=True)
class Context:
    """What a field's check may look at besides the value."""

    base: Path  # the config file's directory: relative paths start there
    issuer_names: frozenset[str] = frozenset()  # the [[issuers]] names, for references


Check = Callable[[Any, Context], Any]


@dataclass(frozen=True)
class Spec:
    """How one setting is read, checked and documented."""

    doc: str
    ge: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] = ()
    check: Check | None = None
    # What the docs show as the default when it is not a plain value ("required", a rule).
    shown: str | None = None
    # Read from a sub-table holding only this key ([delegation] actors = [[...]]).
    inner: str | None = None
    # Read this raw value, checks and all, when the key is absent (a default taken from the
    # file's directory or the environment).
    absent: Any = None
    # A list of strings given to the check as the file has it (no single string for a list of
    # one): the check says what it must be; the schema asks for a non-empty array.
    raw: bool = False


def setting(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    ge: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] = (),
    check: Check | None = None,
    shown: str | None = None,
    inner: str | None = None,
    absent: Any = None,
    raw: bool = False,
) -> Any:
    """A dataclass field that is also a configuration key. A table default is given as its
    type (a nested settings class, or ``dict``), made anew for each instance."""
    meta = {"setting": Spec(doc, ge, le, choices, check, shown, inner, absent, raw)}
    if isinstance(default, type) and (dataclasses.is_dataclass(default) or default is dict):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def show(value: Any) -> str:
    """A value as an error line quotes it: its repr, cut at 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- the reader


def _spec(f: dataclasses.Field[Any]) -> Spec:
    return typing.cast(Spec, f.metadata["setting"])


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _item_type(tp: Any) -> Any:
    """``X`` for ``tuple[X, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0]
    return None


class Reader:
    """Reads a parsed TOML document into settings dataclasses; collects one line per error."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.errors: list[str] = []

    def table(self, cls: type, data: Any, path: str, partial: bool = False) -> Any:
        """An instance of ``cls`` from ``data``, or None after recording its errors (``partial``:
        the instance with defaults for what failed)."""
        if not isinstance(data, dict):
            self.errors.append(f"{path}: must be a table")
            return None
        before = len(self.errors)
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"{path}.{f.name}" if path else f.name
            ok, value = self.value(hints[f.name], f, data.get(f.name), f.name in data, key)
            if ok:
                values[f.name] = value
        for name in sorted(set(data) - {f.name for f in fields(cls)}):
            self.errors.append(
                f"{path}.{name}: unknown setting" if path else f"{name}: unknown setting"
            )
        if len(self.errors) > before:
            return cls(**values) if partial else None
        instance = cls(**values)
        validate = getattr(instance, "_validate", None)
        if validate is not None:
            try:
                validate(lambda name: f"{path}.{name}" if path else name, set(data))
            except SettingsError as exc:
                self.errors.append(str(exc))
                return None
        return instance

    def value(
        self, tp: Any, f: dataclasses.Field[Any], raw: Any, present: bool, key: str
    ) -> tuple[bool, Any]:
        """(True, value) or (False, None) after recording the error; absent: the default."""
        spec = _spec(f)
        if spec.inner is not None and present:
            if not isinstance(raw, dict):
                self.errors.append(f"{key}: must be a table")
                return False, None
            unknown = sorted(set(raw) - {spec.inner})
            if unknown:
                self.errors.append(f"{key}.{unknown[0]}: unknown setting")
                return False, None
            key, present, raw = f"{key}.{spec.inner}", spec.inner in raw, raw.get(spec.inner)
        if not present:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.errors.append(f"{key}: is required")
                return False, None
            if spec.absent is not None:
                return self.checked(spec, key, spec.absent, tp)
            if dataclasses.is_dataclass(tp):  # an absent section: its keys' defaults, read
                return self.value(tp, f, {}, True, key)
            if f.default_factory is not dataclasses.MISSING:
                return True, f.default_factory()
            return True, f.default
        inner = _optional(tp)
        if inner is not None:
            tp = inner
        try:
            value = self.typed(tp, raw, key, spec)
        except Invalid as exc:
            self.errors.append(f"{key}: {exc}")
            return False, None
        if value is _FAILED:
            return False, None
        return self.checked(spec, key, value, tp)

    def checked(self, spec: Spec, key: str, value: Any, tp: Any) -> tuple[bool, Any]:
        try:
            if spec.check is not None:
                value = spec.check(value, self.ctx)
        except Invalid as exc:
            self.errors.append(f"{key}: {exc}")
            return False, None
        return True, Path(value) if tp is Path else value

    def typed(self, tp: Any, raw: Any, key: str, spec: Spec) -> Any:
        """``raw`` as ``tp`` (raising Invalid), or _FAILED after recording nested errors."""
        if dataclasses.is_dataclass(tp):
            value = self.table(typing.cast(type, tp), raw, key)
            return _FAILED if value is None else value
        item = _item_type(tp)
        if item is not None and dataclasses.is_dataclass(item):
            if not isinstance(raw, list):
                name = key.rsplit(".", 1)[-1]
                raise Invalid(f"must be an array of tables ([[{name}]])")
            items = [
                self.table(typing.cast(type, item), v, f"{key}[{i}]") for i, v in enumerate(raw)
            ]
            return _FAILED if any(v is None for v in items) else tuple(items)
        if item is str:
            if spec.raw:  # a list only: the check says what it must be
                return raw
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                raise Invalid("must be a list of strings")
            return tuple(raw)
        if tp is bool:
            if not isinstance(raw, bool):
                raise Invalid(f"must be true or false, got {show(raw)}")
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise Invalid(f"must be an integer, got {show(raw)}")
            return _bounded(raw, spec)
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise Invalid(f"must be a number, got {show(raw)}")
            return float(_bounded(raw, spec))
        if tp is str or tp is Path:
            if not isinstance(raw, str):
                raise Invalid(f"must be a string, got {show(raw)}")
            if spec.choices and raw not in spec.choices:
                raise Invalid(f"must be one of {', '.join(spec.choices)}, got {show(raw)}")
            return raw
        if typing.get_origin(tp) is dict:
            if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
            ):
                raise Invalid("must be a table of strings")
            return dict(raw)
        raise TypeError(f"{key}: no reader for {tp!r}")  # a declaration the reader lacks


_FAILED = object()


def _bounded(value: float, spec: Spec) -> float:
    if spec.ge is not None and value < spec.ge:
        raise Invalid(f"must be >= {_num(spec.ge)}, got {value}")
    if spec.le is not None and value > spec.le:
        raise Invalid(f"must be <= {_num(spec.le)}, got {value}")
    return value


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def object_schema(cls: type) -> dict[str, Any]:
    hints = _hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f in fields(cls):
        props[f.name] = _field_schema(hints[f.name], f)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _field_schema(tp: Any, f: dataclasses.Field[Any]) -> dict[str, Any]:
    spec = _spec(f)
    tp = _optional(tp) or tp
    out = _type_schema(tp, spec)
    if spec.inner is not None:
        out = {
            "type": "object",
            "properties": {spec.inner: out},
            "additionalProperties": False,
        }
    out["description"] = spec.doc
    if spec.shown is not None:
        out["x-default-shown"] = spec.shown
    elif f.default is not dataclasses.MISSING and f.default is not None:
        out["default"] = _jsonable(f.default)
    elif f.default_factory is not dataclasses.MISSING and not dataclasses.is_dataclass(tp):
        out["default"] = _jsonable(f.default_factory())
    return out


def _type_schema(tp: Any, spec: Spec) -> dict[str, Any]:
    if dataclasses.is_dataclass(tp):
        return object_schema(typing.cast(type, tp))
    item = _item_type(tp)
    if item is not None and dataclasses.is_dataclass(item):
        return {"type": "array", "items": object_schema(typing.cast(type, item))}
    if item is str:
        items: dict[str, Any] = {"type": "string"}
        if spec.choices:
            items["enum"] = list(spec.choices)
        if spec.raw:
            return {"type": "array", "items": items, "minItems": 1}
        return {"type": ["array", "string"], "items": items}
    if typing.get_origin(tp) is dict:
        return {"type": "object", "additionalProperties": {"type": "string"}}
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}[tp]
    out: dict[str, Any] = {"type": kind}
    if spec.choices:
        out["enum"] = list(spec.choices)
    if spec.ge is not None:
        out["minimum"] = spec.ge
    if spec.le is not None:
        out["maximum"] = spec.le
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
