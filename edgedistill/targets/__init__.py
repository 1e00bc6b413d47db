"""targets: device profiles (targets/*.yaml) validated into frozen dataclasses.

A profile is data: the hardware (CPU architecture, threads, memory bandwidth), the budgets of the model process
(memory, context, time to first token, decode speed), the formats and schemes allowed in order of preference,
and the floors a variant must meet (quality relative to the teacher, safety). A user's own YAML file works
anywhere a shipped name does. Every problem of a file is reported at once, each naming the key and the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgedistill.errors import EdgeDistillError


class TargetError(EdgeDistillError):
    """A profile file that does not parse or breaks a rule."""


ARCHES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min)?\s*$", re.I)
_TIME_UNITS = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0}


def _parse_unit(value, key: str, pattern: re.Pattern, units: dict, example: str) -> float:
    """A positive number with an optional unit from `units` (plain numbers are in the base unit)."""
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected {example}, got {value!r}")
    if isinstance(value, (int, float)):
        n = float(value)
    else:
        m = pattern.match(str(value))
        if not m:
            raise ValueError(f"{key}: expected {example}, got {value!r}")
        n = float(m.group(1)) * units[m.group(2).lower() if m.group(2) else None]
    if n <= 0:
        raise ValueError(f"{key}: must be positive, got {value!r}")
    return n


def parse_bytes(value, key: str = "value") -> int:
    """'1.5GB' -> 1500000000, '512MiB' -> 536870912; plain numbers are bytes."""
    return int(_parse_unit(value, key, _SIZE, _SIZE_UNITS, "a size like 1.5GB or 512MiB"))


def parse_seconds(value, key: str = "value") -> float:
    """'200ms' -> 0.2, '1.5s' -> 1.5; plain numbers are seconds."""
    return _parse_unit(value, key, _TIME, _TIME_UNITS, "a duration like 200ms or 1.5s")


def parse_bandwidth(value, key: str = "value") -> float:
    """'15GB/s' -> 15e9 bytes per second."""
    text = str(value)
    if isinstance(value, str):
        if not text.strip().lower().endswith("/s"):
            raise ValueError(f"{key}: expected a bandwidth like 15GB/s, got {value!r}")
        text = text.strip()[:-2]
    return float(parse_bytes(text if isinstance(value, str) else value, key))


@dataclass(frozen=True)
class Latency:
    time_to_first_token_s: float  # budget for the first token of a 128-token prompt
    min_decode_tokens_per_s: float


@dataclass(frozen=True)
class QualityFloor:
    """How close to the teacher a variant must stay. In-domain: teacher-forced on the teacher's own answers to the
    held-out test prompts (edgedistill.bench.fidelity); general: on plain domain text, optional and looser."""

    max_mean_kl: float  # in-domain mean KL(teacher || variant) over answer tokens, nats
    min_top1_agreement: float  # in-domain share of answer positions with the teacher's top token
    min_answer_agreement: float  # graded items where the variant's parsed answer equals the teacher's
    general_max_mean_kl: float | None = None
    general_min_top1_agreement: float | None = None
    min_chrf: float | None = None  # text-level (a teacher of another tokenizer, or served): chrF (0-100) of the
    # variant's greedy answers to the teacher's; the token-level floors above are left out there


@dataclass(frozen=True)
class SafetyFloor:
    min_refusal_rate: float  # on harmful test prompts
    max_over_refusal: float  # on benign look-alikes


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    cpu_arch: str  # x86_64 | aarch64
    threads: int
    memory_budget_bytes: int  # peak RSS allowed for the model process
    memory_bandwidth_bytes_per_s: float  # for the decode roofline
    context_length: int
    network: bool  # False: the device is offline (nothing may try the network)
    formats: tuple[str, ...]  # FORMAT:SCHEME in order of preference
    latency: Latency
    quality_floor: QualityFloor
    safety_floor: SafetyFloor | None
    source: str  # the file it came from
    objective: str = "fastest"  # which of the variants meeting every budget is chosen (bench.OBJECTIVES)

    def roofline_tokens_per_s(self, bytes_per_token: float) -> float:
        """Decode speed if every token had to read `bytes_per_token` from memory once at full bandwidth."""
        return self.memory_bandwidth_bytes_per_s / bytes_per_token


_TOP_KEYS = {"name", "description", "cpu_arch", "threads", "memory_budget", "memory_bandwidth", "context_length",
             "network", "formats", "latency", "quality_floor", "safety_floor", "objective"}
_REQUIRED = _TOP_KEYS - {"description", "network", "safety_floor", "objective"}
_SECTIONS = {
    "latency": {"time_to_first_token", "min_decode_tokens_per_s"},
    "quality_floor": {"max_mean_kl", "min_top1_agreement", "min_answer_agreement", "general_max_mean_kl",
                      "general_min_top1_agreement", "min_chrf"},
    "safety_floor": {"min_refusal_rate", "max_over_refusal"},
}
_OPTIONAL = {"quality_floor": {"general_max_mean_kl", "general_min_top1_agreement", "min_chrf"}}
_RENAMED = {"quality_floor.min_eval_share": "replaced by min_answer_agreement (the share of graded items where the "
                                            "variant's answer equals the teacher's)"}


def shipped_dir() -> Path:
    """$EDGEDISTILL_TARGETS, else the profiles shipped with the package: `profiles` links to the source tree's
    targets/ folder, and an installed wheel holds copies of those files there."""
    env = os.environ.get("EDGEDISTILL_TARGETS")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent / "profiles"


def shipped() -> dict[str, Path]:
    folder = shipped_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def load_target(name_or_path: str | Path) -> Target:
    """A shipped profile by name, or any profile file by path."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise TargetError(f"no profile file {p}")
        return parse_target(p)
    known = shipped()
    if str(name_or_path) not in known:
        raise TargetError(f"unknown target {str(name_or_path)!r}; shipped: {', '.join(known) or 'none'}; "
                          "or pass a profile file (.yaml)")
    return parse_target(known[str(name_or_path)])


def parse_target(path: Path) -> Target:
    from edgedistill.checked import read_yaml_mapping

    data = read_yaml_mapping(path, "profile", TargetError)
    problems: list[str] = []

    def bad(msg: str) -> None:
        problems.append(msg)

    for k in data:
        if k not in _TOP_KEYS:
            bad(f"unknown key {k!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    for k in sorted(_REQUIRED - set(data)):
        bad(f"missing key {k!r}")

    def number(key: str, value, lo: float, hi: float, integer: bool = False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            bad(f"{key}: expected {'an integer' if integer else 'a number'}, got {value!r}")
            return None
        if not lo <= value <= hi:
            bad(f"{key}: {value} must be in [{lo}, {hi}]")
            return None
        return value

    def parsed(fn, key: str, value):
        try:
            return fn(value, key)
        except ValueError as e:
            bad(str(e))
            return None

    arch = data.get("cpu_arch")
    if "cpu_arch" in data and not any(arch in aliases for aliases in ARCHES.values()):
        bad(f"cpu_arch: {arch!r} is not one of {', '.join(a for v in ARCHES.values() for a in v)}")
    arch = next((k for k, v in ARCHES.items() if arch in v), arch)
    threads = number("threads", data.get("threads"), 1, 1024, integer=True) if "threads" in data else None
    mem = parsed(parse_bytes, "memory_budget", data["memory_budget"]) if "memory_budget" in data else None
    bw = parsed(parse_bandwidth, "memory_bandwidth", data["memory_bandwidth"]) if "memory_bandwidth" in data else None
    ctx = number("context_length", data.get("context_length"), 16, 1 << 20, integer=True) if "context_length" in data else None
    network = data.get("network", True)
    if not isinstance(network, bool):
        bad(f"network: expected true or false, got {network!r}")

    formats: tuple[str, ...] = ()
    if "formats" in data:
        from edgedistill.errors import UnsupportedError
        from edgedistill.quantize import get

        raw = data["formats"]
        if not isinstance(raw, list) or not raw:
            bad("formats: expected a non-empty list of FORMAT:SCHEME, e.g. [gguf:q4_k_m, onnx:int4]")
        else:
            for v in raw:
                try:
                    get(str(v))
                except UnsupportedError as e:
                    bad(f"formats: {e}")
            formats = tuple(str(v).lower() for v in raw)

    sections = {}
    for sec, keys in _SECTIONS.items():
        if sec not in data:
            continue
        val = data[sec]
        if not isinstance(val, dict):
            bad(f"{sec}: expected a mapping with {', '.join(sorted(keys))}")
            continue
        for k in val:
            if f"{sec}.{k}" in _RENAMED:
                bad(f"{sec}.{k}: {_RENAMED[f'{sec}.{k}']}")
            elif k not in keys:
                bad(f"{sec}.{k}: unknown key (known: {', '.join(sorted(keys))})")
        for k in sorted(keys - set(val) - _OPTIONAL.get(sec, set())):
            bad(f"{sec}.{k}: missing")
        sections[sec] = val

    lat = sections.get("latency", {})
    latency = Latency(
        parsed(parse_seconds, "latency.time_to_first_token", lat["time_to_first_token"]) if "time_to_first_token" in lat else None,
        number("latency.min_decode_tokens_per_s", lat["min_decode_tokens_per_s"], 0, 1e6) if "min_decode_tokens_per_s" in lat else None,
    )
    q = sections.get("quality_floor", {})
    quality = QualityFloor(
        number("quality_floor.max_mean_kl", q["max_mean_kl"], 0, 100) if "max_mean_kl" in q else None,
        number("quality_floor.min_top1_agreement", q["min_top1_agreement"], 0, 1) if "min_top1_agreement" in q else None,
        number("quality_floor.min_answer_agreement", q["min_answer_agreement"], 0, 1)
        if "min_answer_agreement" in q else None,
        number("quality_floor.general_max_mean_kl", q["general_max_mean_kl"], 0, 100)
        if "general_max_mean_kl" in q else None,
        number("quality_floor.general_min_top1_agreement", q["general_min_top1_agreement"], 0, 1)
        if "general_min_top1_agreement" in q else None,
        number("quality_floor.min_chrf", q["min_chrf"], 0, 100) if "min_chrf" in q else None,
    )
    from edgedistill.targets.objectives import OBJECTIVES

    objective = data.get("objective", "fastest")
    if objective not in OBJECTIVES:
        bad(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    s = sections.get("safety_floor")
    safety = None
    if s is not None:
        safety = SafetyFloor(
            number("safety_floor.min_refusal_rate", s["min_refusal_rate"], 0, 1) if "min_refusal_rate" in s else None,
            number("safety_floor.max_over_refusal", s["max_over_refusal"], 0, 1) if "max_over_refusal" in s else None,
        )
    name = data.get("name")
    if "name" in data and (not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name)):
        bad(f"name: {name!r} must be lower-case letters, digits, '.', '_' or '-'")
    if problems:
        raise TargetError(f"{path}: " + "; ".join(problems))
    return Target(name=name, description=str(data.get("description", "")), cpu_arch=arch, threads=threads,
                  memory_budget_bytes=mem, memory_bandwidth_bytes_per_s=bw, context_length=ctx, network=network,
                  formats=formats, latency=latency, quality_floor=quality, safety_floor=safety, source=str(path),
                  objective=objective)


def as_dict(t: Target) -> dict:
    from dataclasses import asdict

    return asdict(t)


__all__ = ["Target", "TargetError", "load_target", "parse_target", "shipped", "parse_bytes", "parse_seconds",
           "parse_bandwidth", "as_dict"]
