"""Options declared once: a config dataclass field (type, default, help) gives its CLI flag and preset key.

Why: the run dataclasses are what a preset fills and what is saved beside a run; deriving the Typer flags
from the same fields means a new option is one line, with one help text, reachable from both places.
Declare a field with :func:`option`; :func:`flag_parameters` turns a dataclass into Typer parameters and
:func:`flag_values` turns the parsed flags back into config values (``None`` = not given, the preset or the
default decides).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Union

import typer

#: how a field's flag is read: ``csv`` ("a,b" or "none" -> list), ``floats`` ("0.7,0.1,0.2" -> tuple),
#: ``pairs`` (repeatable key=value, values read as YAML -> dict merged over the preset's)
PARSERS = ("csv", "floats", "pairs")


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, short: str | None = None,
           parse: str | None = None, factory: Any = dataclasses.MISSING, required_flag: bool = False) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the default value (use ``factory`` for lists and dicts).
        help: the flag's help text (also documents the preset key of the same name).
        flag: the flag when it is not ``--field-name`` (booleans get ``--x/--no-x``).
        short: an extra short flag such as ``-m``.
        parse: one of :data:`PARSERS` when the flag's text is not the field's type.
        required_flag: the command needs this flag (no preset can give it).
    """
    meta = {"help": help, "flag": flag, "short": short, "parse": parse, "required_flag": required_flag}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return " (default: on)" if value else ""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f" (default: {value})"


def flag_name(f: dataclasses.Field) -> str:
    """The long flag of a field: its ``flag`` metadata or ``--field-name``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_parameters(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Typer parameters (all keyword-only, ``None`` when not given) for the :func:`option` fields of ``cls``."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        meta, base = f.metadata, _strip_optional(hints[f.name])
        flag = flag_name(f)
        decls = [flag]
        if base is bool:
            decls = [f"{flag}/--no-{flag[2:]}"]
            annotation: Any = bool | None
        elif meta.get("parse") in ("csv", "floats"):
            annotation = str | None
        elif meta.get("parse") == "pairs" or typing.get_origin(base) is list:
            annotation = list[str] | None
        else:
            annotation = base | None
        if meta.get("short"):
            decls.append(meta["short"])
        required = meta.get("required_flag")
        opt = typer.Option(... if required else None, *decls, help=meta["help"] + _default_text(f),
                           show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation))
    return params


class FlagError(ValueError):
    """A flag's text could not be read as its field's value."""


def flag_values(cls: type, given: dict[str, Any], preset_section: dict[str, Any] | None = None) -> dict[str, Any]:
    """Config values from parsed flags (``None`` = not given), reading the ``parse`` kinds of :func:`option`."""
    import yaml

    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in given.items():
        f = fields.get(name)
        if f is None or value is None or value == []:
            continue
        parse, flag = f.metadata.get("parse"), flag_name(f)
        if parse == "csv":
            value = [] if value == "none" else [v for v in value.split(",") if v]
        elif parse == "floats":
            try:
                value = tuple(float(x) for x in value.split(","))
            except ValueError:
                raise FlagError(f"{flag}: expected numbers like 0.7,0.1,0.2, got {value!r}") from None
        elif parse == "pairs":
            merged = dict((preset_section or {}).get(name) or {})
            for pair in value:
                key, sep, text = pair.partition("=")
                if not sep or not key.strip():
                    raise FlagError(f"{flag} expects key=value, got {pair!r}")
                merged[key.strip()] = yaml.safe_load(text)
            value = merged
        out[name] = value
    return out


def coerce_field_types(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Preset values as the field types want them where YAML cannot say it (a list for a tuple field)."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        base = _strip_optional(hints.get(name, Any))
        if (base is tuple or typing.get_origin(base) is tuple) and isinstance(value, list):
            out[name] = tuple(value)
    return out


def with_signature(params: list[inspect.Parameter]):
    """Give a ``**kwargs`` command the parameters Typer should read (Typer honours ``__signature__``)."""

    def wrap(fn):
        fn.__signature__ = inspect.Signature(params)
        return fn

    return wrap
