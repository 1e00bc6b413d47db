"""The one checked path for files a user hands us: text, YAML, JSON lines, safetensors, model folders.

Whatever is wrong with such a file (unreadable, not UTF-8, malformed, nested absurdly deep, cut short, missing
its tokenizer) becomes one EdgeDistillError line naming the file and the fix, never a UnicodeDecodeError,
RecursionError, SafetensorError or TypeError traceback from the library that happened to read it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from edgedistill.errors import EdgeDistillError, InvalidModelError


def url_problem(value: str) -> str | None:
    """What is wrong with `value` as an http(s) server address (None when nothing is): a URL the HTTP client would
    fail on deep inside a request (an unclosed [IPv6 bracket, a port that is no number) is refused here, first."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port  # parsed lazily: a bad port raises here
    except ValueError as e:
        return f"{value!r} is not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return f"{value!r} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{value!r} names no host"
    if port == 0:
        return f"{value!r} has port 0"
    return None


def read_text(path: Path, what: str = "file", error=EdgeDistillError) -> str:
    """The file's text, decoded as UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start}, line {line}); save it as UTF-8") from None


# A settings file or profile has tens of values; one whose aliases (&a ... *a) would expand to more is an alias bomb
# ("billion laughs"), refused before anything walks or prints its expansion.
MAX_YAML_VALUES = 100_000


class _TooLarge(Exception):
    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


def _expanded_size(node, sizes: dict) -> int:
    """How many values `node` stands for with every alias written out (each shared node counted once per use, its
    size computed once): a linear walk of the composed graph, however large the expansion."""
    key = id(node)
    if key not in sizes:
        sizes[key] = 1  # a node met again while being sized (a recursive alias) counts once
        value = node.value if isinstance(node.value, list) else []
        children = [n for pair in value for n in (pair if isinstance(pair, tuple) else (pair,))]
        sizes[key] = 1 + sum(_expanded_size(c, sizes) for c in children)
        if sizes[key] > MAX_YAML_VALUES:
            raise _TooLarge(sizes[key])
    return sizes[key]


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _unique_keys_loader():
    """PyYAML's safe loader, refusing a mapping that sets one key twice (plain YAML keeps the last value silently,
    so a typo'd second `threads:` would win unseen)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_document(self, node):
            _expanded_size(node, {})
            return super().construct_document(node)

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: later keys may override what it brings
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the constructor below says so
                    continue
                if first is not None:
                    raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return Loader


def read_yaml_mapping(path: Path, what: str = "settings file", error=EdgeDistillError) -> dict:
    """A YAML file holding one mapping: unreadable, non-UTF-8, malformed, too deeply nested or not a mapping
    gives a one-line `error` naming the file."""
    import yaml

    text = read_text(path, what, error)
    try:
        data = yaml.load(text, Loader=_unique_keys_loader())
    except _DuplicateKey as e:
        raise error(f"{what} {path} sets {e.key!r} twice (line {e.first} and line {e.second}); keep one") from None
    except _TooLarge as e:
        raise error(f"{what} {path} expands through its aliases (&name / *name) to over {MAX_YAML_VALUES:,} values "
                    f"(at least {e.count:,}); a {what} holds a few dozen: write the values out") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{what} {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to be a {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a mapping of key: value, not a {type(data).__name__}")
    return data


def read_json(path: Path, what: str = "file", error=EdgeDistillError):
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply") from None


def jsonl(path: Path, what: str = "file", error=EdgeDistillError) -> Iterator[tuple[int, object, str | None]]:
    """(line number, parsed object or None, problem or None) per non-blank line; the caller decides whether a
    bad line stops it or is skipped."""
    for n, line in enumerate(read_text(path, what, error).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line), None
        except json.JSONDecodeError as e:
            yield n, None, f"not valid JSON ({e.msg} at column {e.colno})"
        except RecursionError:
            yield n, None, "nested too deeply"


def check_safetensors(path: Path, error=InvalidModelError) -> dict:
    """The header of a .safetensors file, after proving the file holds every byte the header promises (a cut
    file has a readable header and too few bytes). Returns {tensor name: header entry}."""
    path = Path(path)
    fix = "copy or download it again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise error(f"{path} is damaged or truncated ({size} bytes, no header); {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise error(f"{path} is damaged or truncated (its header claims {n} bytes, the file has {size}); {fix}")
            header = json.loads(f.read(n))
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError):
        raise error(f"{path} is damaged or truncated (its header is not valid JSON); {fix}") from None
    if not isinstance(header, dict):
        raise error(f"{path} is damaged (its header is not a mapping); {fix}")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (TypeError, KeyError, ValueError, IndexError):
        raise error(f"{path} is damaged (a tensor entry has no data_offsets); {fix}") from None
    if 8 + n + end > size:
        raise error(f"{path} is truncated: its tensors need {8 + n + end} bytes, the file has {size}; {fix}")
    return tensors


def load_safetensors_numpy(path: Path, error=InvalidModelError) -> dict:
    """Every array of a checked .safetensors file (numpy)."""
    from safetensors.numpy import load_file

    check_safetensors(path, error)
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError and friends: the file is not what its header says
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{path} is damaged ({first}); copy or make it again") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "spiece.model")


def check_model_folder(folder: Path, weights: bool = True) -> tuple[dict, dict]:
    """A Hugging Face model folder we can load: a readable config.json, complete weight files (unless only its
    tokenizer is wanted: weights=False), tokenizer files. Returns what it read: (config, {weight file: its tensor
    headers})."""
    folder = Path(folder)
    config = read_json(folder / "config.json", "model config", InvalidModelError)
    if not isinstance(config, dict):
        raise InvalidModelError(f"{folder / 'config.json'} must hold a JSON object")
    headers = {f: check_safetensors(f) for f in sorted(folder.glob("*.safetensors"))}
    missing = []
    if not headers and weights:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        missing.append("no weights (*.safetensors" + (f"; {pickled[0]} is a pickle, which edgedistill never loads: "
                                                      "convert it to safetensors where it came from" if pickled else "")
                       + ")")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if missing:
        raise InvalidModelError(f"{folder} has a config.json but {' and '.join(missing)}: copy what is missing from "
                                "where the model came from")
    return config, headers
