"""Command-line flags made from a stage's settings dataclass (edgedistill.settings), so each flag's help, type and
default come from the one field that defines them, plus `--config FILE`. Flags default to "not given" (None): only
what the user typed overrides the config file, which overrides the dataclass defaults."""

from __future__ import annotations

import typing
from dataclasses import fields
from pathlib import Path

import click

from edgedistill.settings import _base, _hints, default_of, load


def parse_duration(value: str) -> float:
    """'90s', '20m', '1.5h' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    v = str(value).strip().lower()
    try:
        return float(v[:-1]) * units[v[-1]] if v and v[-1] in units else float(v)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 20m or 1.5h") from None


def parse_pair(value: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in str(value).split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give two block numbers as S:T, e.g. 6:18") from None
    return a, b


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def settings_options(cls, *, skip: tuple[str, ...] = ()):
    """A decorator adding `--config` and one flag per field of `cls` (fields with cli=False, or in `skip`, left
    out). The command receives them as keyword arguments named like the fields, plus `config`."""

    def decorate(fn):
        hints = _hints(cls)
        own = set(vars(cls).get("__annotations__", {}))  # the command's own fields first, then the inherited knobs
        ordered = [f for f in fields(cls) if f.name in own] + [f for f in fields(cls) if f.name not in own]
        for f in reversed(ordered):
            if f.name in skip or not f.metadata.get("cli", True):
                continue
            m, tp = f.metadata, _base(hints[f.name])
            default = default_of(f)
            shown = "" if default in (None, [], ()) else f" [default: {_show(default)}]"
            if m.get("required"):  # given by the flag or by --config: click cannot enforce it, the settings do
                shown += " [required]"
            help_ = (m.get("help") or "") + shown
            for old in m.get("aliases") or ():  # an earlier name, hidden, read for one release with a notice
                fn = _alias_option(f, tp, old)(fn)
            kw: dict = {"default": None, "help": help_}
            origin = typing.get_origin(tp)
            if m.get("kind") == "duration":
                kw["callback"] = lambda ctx, p, v: None if v is None else parse_duration(v)
                kw["metavar"] = "DURATION"
            elif m.get("kind") == "pair":
                kw["callback"] = lambda ctx, p, v: None if v is None else parse_pair(v)
                kw["metavar"] = "S:T"
            elif m.get("kind") == "url":
                kw["metavar"] = "URL"
            elif tp is bool:
                name = _flag(f)
                decl = name if "/" in name else f"{name}/--no-{name[2:]}"
                fn = click.option(decl, f.name, default=None, help=help_)(fn)
                continue
            elif origin is list:
                inner = (typing.get_args(tp) or (str,))[0]
                kw.update(multiple=True, type=click.Path(path_type=Path) if inner is Path else None)
                kw["default"] = None
            elif m.get("choices") is not None and not callable(m["choices"]):
                if all(isinstance(c, str) for c in m["choices"]):
                    kw["type"] = click.Choice(list(m["choices"]))
                else:  # numbers: parsed as such, the setting checks the choice
                    kw["type"] = tp
                    kw["help"] = f"{help_} One of {', '.join(map(str, m['choices']))}."
            elif tp is Path:
                kw["type"] = click.Path(path_type=Path)
            elif tp in (int, float, str):
                kw["type"] = tp
            fn = click.option(_flag(f), f.name, **kw)(fn)
        return click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                            help="YAML file of these settings (e.g. a run's settings.yaml); flags override it.")(fn)

    return decorate


_ALIAS = "__was__"


def _alias_option(f, tp, old: str):
    """A hidden flag under a field's earlier name, into a parameter settings_from folds into the field."""
    name, dest = "--" + old.replace("_", "-"), f"{f.name}{_ALIAS}{old}"
    if tp is bool:
        return click.option(f"{name}/--no-{name[2:]}", dest, default=None, hidden=True)
    kw: dict = {"default": None, "hidden": True}
    if f.metadata.get("kind") == "duration":
        kw["callback"] = lambda ctx, p, v: None if v is None else parse_duration(v)
    elif typing.get_origin(tp) is list:
        inner = (typing.get_args(tp) or (str,))[0]
        kw.update(multiple=True, type=click.Path(path_type=Path) if inner is Path else None)
    elif tp is Path:
        kw["type"] = click.Path(path_type=Path)
    elif tp in (int, float, str):
        kw["type"] = tp
    return click.option(name, dest, **kw)


def settings_from(cls, kwargs: dict):
    """The settings from `--config` and the flags the user gave (pops them out of `kwargs`; a flag given under a
    field's earlier name counts as the field's, with a one-line deprecation notice)."""
    from edgedistill.settings import deprecated

    config = kwargs.pop("config", None)
    given = {}
    for key in [k for k in kwargs if _ALIAS in k]:
        field_name, old = key.split(_ALIAS)
        v = kwargs.pop(key)
        if v is not None and v != ():
            deprecated("--" + old.replace("_", "-"), _flag(next(f for f in fields(cls) if f.name == field_name)))
            if kwargs.get(field_name) in (None, ()):
                kwargs[field_name] = v
    for f in fields(cls):
        if f.name in kwargs:
            v = kwargs.pop(f.name)
            if v is not None and v != ():
                given[f.name] = list(v) if isinstance(v, tuple) and typing.get_origin(_base(_hints(cls)[f.name])) is list else v
    return load(cls, config, given)


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "none"
    return str(v)


def old_flag(old: str, new: str, **kw):
    """A flag kept under its earlier name for one release: hidden, and a one-line notice when used. The command
    receives it as a parameter named like `old` (without dashes) and folds it into `new`'s value."""
    from edgedistill.settings import deprecated

    def note(ctx, param, value):
        if value is not None:
            deprecated(old, new)
        return value

    return click.option(old, old.lstrip("-").replace("-", "_") + "_was", default=None, hidden=True, callback=note,
                        expose_value=True, **kw)
