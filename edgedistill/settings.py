"""Stage settings: one dataclass per stage, filled from defaults < a YAML file (`--config FILE`) < flags.

A stage declares its settings as a frozen dataclass whose fields are made with `setting(...)`: a default, a help
text, and the constraints (range, choices, required, must exist) checked once, in `__post_init__`, all at once
(every problem listed with its key, not just the first). The CLI builds its flags from the same fields
(`edgedistill.cli.options.settings_options`), so a field's help and range live in one place. `write` puts the
resolved settings beside a stage's outputs as YAML; `load(cls, that_file)` gives them back, so any run can be
repeated with `--config`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from edgedistill.errors import EdgeDistillError


class SettingsError(EdgeDistillError):
    """A settings value or settings file that breaks its field's constraint (exit code 2)."""


def setting(default=None, help: str = "", *, min=None, max=None, min_open: bool = False, choices=None,
            required: bool = False, exists: str | None = None, kind: str | None = None, flag: str | None = None,
            cli: bool = True, key: bool = True, aliases: tuple[str, ...] = ()):
    """A settings field. `min`/`max` bound numbers (`min_open`: strictly above min), `choices` names the allowed
    values (a tuple, or a callable returning one), `required` must be given (by the file or a flag), `exists`
    ("file" | "dir" | "any") paths that must exist, `kind` a parser or check ("duration": 90s, 20m, 1.5h; "pair": S:T; "url": an http(s) URL),
    `flag` the command-line name when it is not the field's, `cli` False for settings only a file sets, `key` False
    for settings that do not change what a stage makes (how it runs: retries, checkpoint cadence), left out of the
    reuse keys `run` derives from settings; `aliases` earlier names of the field, still read from files and flags
    (--old-name) for one release with a one-line deprecation notice."""
    meta = {"help": help, "min": min, "max": max, "min_open": min_open, "choices": choices, "required": required,
            "exists": exists, "kind": kind, "flag": flag, "cli": cli, "key": key, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


def like(cls, name: str, default=MISSING):
    """The field `name` of the settings class `cls`, declared there once (help, range, flag, default), for a class
    that takes that one knob of a stage without all the others; `default` only where a stage's measured recipe
    differs (say why beside it and in the README)."""
    f = next(f for f in fields(cls) if f.name == name)
    return setting(default_of(f) if default is MISSING else default, **dict(f.metadata))


def deprecated(old: str, new: str) -> None:
    """The one-line notice for a setting or flag used under its earlier name (on stderr, once per name)."""
    import sys

    if old not in _NOTICED:
        _NOTICED.add(old)
        print(f"note: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)


_NOTICED: set[str] = set()


@functools.cache
def _hints(cls) -> dict:
    """The resolved field types of a settings class (resolved once per class, not at every construction)."""
    return typing.get_type_hints(cls)


def _base(tp):
    """The non-None type of an annotation (int | None -> int), with its origin for containers."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and len(args) == 1:
        tp = args[0]
    return tp


def _coerce(name: str, tp, value, problems: list[str]):
    """A value from YAML or a flag into the field's type; a problem (and the value unchanged) when it cannot be."""
    if value is None:
        return None
    tp = _base(tp)
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if tp is Path:
            if not isinstance(value, (str, Path)):
                raise TypeError
            return Path(value)
        if origin in (list, tuple):
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise TypeError
            (inner, *_rest) = typing.get_args(tp) or (object,)
            if origin is tuple:
                args = typing.get_args(tp)
                if len(args) == 2 and args[1] is Ellipsis:
                    return tuple(_coerce(name, args[0], v, problems) for v in value)
                if len(args) != len(value):
                    problems.append(f"{name}: expected {len(args)} values, got {len(value)}")
                    return value
                return tuple(_coerce(name, a, v, problems) for a, v in zip(args, value))
            return [_coerce(name, inner, v, problems) for v in value]
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except TypeError:
        problems.append(f"{name}: {value!r} is not a {getattr(tp, '__name__', str(tp))}")
        return value
    return value


@dataclass(frozen=True)
class Settings:
    """Base of every stage's settings: checks each field's constraints at construction (all problems at once)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        hints = _hints(type(self))
        for f in fields(self):
            value = _coerce(f.name, hints[f.name], getattr(self, f.name), problems)
            object.__setattr__(self, f.name, value)
            problems += _check_field(f, value)
        # constraints between fields too, so that every problem is reported at once: each class a settings class is
        # made of (inherited knob groups included) checks its own
        for klass in type(self).__mro__:
            if "extra_problems" not in vars(klass):
                continue
            try:
                problems += [p for p in vars(klass)["extra_problems"](self) if p not in problems]
            except Exception:  # a check that could not run on fields already reported as wrong
                if not problems:
                    raise
        if problems:
            raise SettingsError(f"{type(self).__name__}: " + "; ".join(problems))

    def extra_problems(self) -> list[str]:
        """Constraints between fields (override; every class in the MRO that defines it is asked, so a class need
        not call its bases'); the per-field ones come from `setting(...)`."""
        return []

    def to_dict(self) -> dict:
        """Plain YAML/JSON values: paths as strings, tuples as lists."""

        def plain(v):
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _check_field(f, value) -> list[str]:
    m, name = f.metadata, f.name
    if not m:
        return []
    if value is None or value == [] or value == ():
        return [f"{name} is required"] if m.get("required") else []
    out = []
    numbers = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []
    for v in numbers:
        lo, hi = m.get("min"), m.get("max")
        if lo is not None and (v < lo or (m.get("min_open") and v == lo)):
            out.append(f"{name}={v} must be {'above' if m.get('min_open') else 'at least'} {lo}")
        if hi is not None and v > hi:
            out.append(f"{name}={v} must be at most {hi}")
    choices = m.get("choices")
    if choices is not None:
        allowed = choices() if callable(choices) else choices
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v not in allowed:
                out.append(f"{name}={v!r} is not one of {', '.join(map(str, allowed))}")
    if m.get("kind") == "url" and isinstance(value, str):
        from edgedistill.checked import url_problem

        if (problem := url_problem(value)) is not None:
            out.append(f"{name}: {problem}; give the server's base URL, e.g. http://127.0.0.1:8080/v1")
    exists = m.get("exists")
    if exists:
        for p in (value if isinstance(value, (list, tuple)) else [value]):
            p = Path(p)
            ok = p.is_file() if exists == "file" else p.is_dir() if exists == "dir" else p.exists()
            if not ok:
                what = {"file": "file", "dir": "folder"}.get(exists, "path")
                out.append(f"{name}: {p} is not an existing {what}")
    return out


def read_yaml_mapping(path: Path, what: str = "settings file") -> dict:
    """A YAML settings file, read through edgedistill.checked (one line, exit 2, for whatever is wrong with it)."""
    from edgedistill.checked import read_yaml_mapping as read

    return read(path, what, SettingsError)


def load(cls, config: Path | None = None, overrides: dict | None = None):
    """defaults < the YAML file `config` (its keys must be fields of `cls`) < `overrides` (flags the user gave:
    None means not given). Every problem of the merged settings is reported at once."""
    names = {f.name for f in fields(cls)}
    renamed = {a: f.name for f in fields(cls) for a in (f.metadata.get("aliases") or ())}
    values: dict = {}
    if config is not None:
        data = read_yaml_mapping(config)
        for old in [k for k in data if k in renamed and renamed[k] not in data]:
            deprecated(f"the setting {old!r} ({config})", repr(renamed[old]))
            data[renamed[old]] = data.pop(old)
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingsError(f"{config}: unknown setting(s) {', '.join(map(str, unknown))}; known: "
                                f"{', '.join(sorted(names))}")
        values.update(data)
    for k, v in (overrides or {}).items():
        if k not in names:
            raise SettingsError(f"{cls.__name__} has no setting {k!r}")
        if v is not None:
            values[k] = v
    try:
        return cls(**values)
    except TypeError as e:  # a required dataclass argument left out: reported like the other problems
        raise SettingsError(f"{cls.__name__}: {e}") from None


def write(settings: Settings, path: Path) -> Path:
    """The resolved settings as YAML at `path` (atomically), with a header saying how to rerun them."""
    import yaml

    from edgedistill.paths import write_text_atomic

    text = (f"# {type(settings).__name__}: the resolved settings of this run; rerun with --config {Path(path).name}\n"
            + yaml.safe_dump(settings.to_dict(), sort_keys=False))
    write_text_atomic(Path(path), text)
    return Path(path)


def default_of(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None
