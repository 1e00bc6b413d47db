"""What a profile optimises among the variants that meet every budget and floor: a registry, one entry each.

A profile names one (`objective: fastest`, the default); `edgedistill.bench.choose` takes the variant with the
largest key.
Each entry's key reads only measured figures of a bench row (edgedistill.bench.rows.Row)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    name: str
    help: str
    key: Callable[[object], tuple]


OBJECTIVES: dict[str, Objective] = {}


def objective(name: str, help: str):
    def add(fn: Callable[[object], tuple]) -> Callable[[object], tuple]:
        OBJECTIVES[name] = Objective(name, help, fn)
        return fn

    return add


def _in_domain(row) -> dict:
    return ((row.quality or {}).get("in_domain") or {}).get("overall") or {}


@objective("fastest", "the highest measured decode tokens/s (then the closest to the teacher)")
def fastest(row) -> tuple:
    q = _in_domain(row)
    return row.decode_tokens_per_s, q.get("top1_agreement", 0.0), -q.get("mean_kl", 0.0)


@objective("closest", "the lowest in-domain KL to the teacher (then the fastest)")
def closest(row) -> tuple:
    return -_in_domain(row).get("mean_kl", float("inf")), row.decode_tokens_per_s
