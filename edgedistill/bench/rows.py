"""The bench's typed rows: one `Row` per measured bundle and one `Check` per budget or floor.

The runner fills them, budgets checks and ranks them, the report writes them; bench.json holds `Row.as_dict()` (schema
in bench.settings.SCHEMA_VERSION) and `Row.from_dict` reads a report back. The speed and quality blocks stay the
plain dicts the worker process returns (their keys are listed in docs/bench.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class Check:
    """One budget or floor: pass / fail, or "uncertain" when the value's 95% interval straddles the limit (not
    passed). margin: how far inside (positive) or outside; note: why there is no value."""

    value: float | None
    limit: float
    status: str  # "pass" | "fail" | "uncertain"
    margin: float | None = None
    margin_share: float | None = None
    note: str | None = None
    ci: list[float] | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict:
        out = {"value": self.value, "limit": self.limit, "status": self.status, "pass": self.passed,
               "margin": self.margin}
        if self.value is None:
            out["note"] = self.note
        else:
            out["margin_share"] = self.margin_share
        if self.ci is not None:
            out["ci"] = list(self.ci)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Check:
        return cls(d["value"], d["limit"], d["status"], d.get("margin"), d.get("margin_share"), d.get("note"),
                   d.get("ci"))


@dataclass
class Row:
    """One bundle as the bench measured it."""

    name: str
    bundle: str
    key: str  # FORMAT:SCHEME
    format: str
    scheme: str
    model_bytes: int
    parameters: int | None = None
    bits_per_weight: float | None = None
    source: str | None = None  # the model the bundle was exported from
    reference: bool = False  # the teacher's exact file that quality is measured against
    comparison: bool = False  # measured, never chosen
    allowed: bool = True  # its format:scheme is in the profile
    teacher_variant: bool = False  # one of the teacher's own quantized files
    adapter: str | None = None  # a LoRA adapter bundle (gguf-lora) applied over this bundle as its base
    adapter_bytes: int | None = None  # its file's size (model_bytes holds the base's and the adapter's)
    runtime: dict | None = None  # what the runtime reported of itself (system info, providers)
    status: str | None = None  # the speed process: ok, over memory budget, crashed ...
    message: str | None = None
    speed: dict | None = None
    llama_bench: dict | None = None  # the format's own bench tool beside the bench's timing (GGUF)
    quality: dict | None = None
    budgets: dict[str, Check] = field(default_factory=dict)
    measured_on: str | None = None  # a merged device report: "device" or "build machine" (no device figures)
    build: dict | None = None  # a merged device report: the build machine's status, speed, quality, llama_bench
    answers: dict | None = field(default=None, repr=False)  # the reference's graded answers, for agreement; not written

    @property
    def candidate(self) -> bool:
        """A variant the profile may choose: in the profile, neither the reference nor a comparison."""
        return self.allowed and not self.reference and not self.comparison

    @property
    def meets_all_budgets(self) -> bool:
        return bool(self.budgets) and all(c.passed for c in self.budgets.values())

    @property
    def uncertain(self) -> list[str]:
        return sorted(k for k, c in self.budgets.items() if c.status == "uncertain")

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.speed or {}).get("decode_tokens_per_s") or 0.0

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("budgets", "answers")}
        for optional in ("llama_bench", "measured_on", "build", "adapter", "adapter_bytes"):
            if out[optional] is None:
                out.pop(optional)
        return {**out, "budgets": {k: c.as_dict() for k, c in self.budgets.items()},
                "meets_all_budgets": self.meets_all_budgets, "uncertain": self.uncertain}

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        known = {f.name for f in fields(cls)} - {"budgets", "answers"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   budgets={k: Check.from_dict(c) for k, c in (d.get("budgets") or {}).items()})
