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


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _unique_keys_loader():
    """PyYAML's safe loader, refusing a mapping that sets one key twice (plain YAML keeps the last value silently,
    so a typo'd second `threads:` would win unseen)."""
    import yaml

    class Loader(yaml.SafeLoader):
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


def check_model_folder(folder: Path) -> tuple[dict, dict]:
    """A Hugging Face model folder we can load: a readable config.json, complete weight files, tokenizer files.
    Returns what it read: (config, {weight file: its tensor headers})."""
    folder = Path(folder)
    config = read_json(folder / "config.json", "model config", InvalidModelError)
    if not isinstance(config, dict):
        raise InvalidModelError(f"{folder / 'config.json'} must hold a JSON object")
    headers = {f: check_safetensors(f) for f in sorted(folder.glob("*.safetensors"))}
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidModelError(f"{folder} has a config and weights but no tokenizer files ({', '.join(TOKENIZER_FILES)}"
                                "): copy them from where the model came from")
    return config, headers
