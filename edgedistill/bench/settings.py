"""bench's settings, and the names its report uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.data.held_out import HeldOutSettings
from edgedistill.settings import Settings, like, setting


SCHEMA_VERSION = 3  # 2: in-domain fidelity, answer agreement, intervals, teacher variants as candidates;
# 3: cold timings, llama-bench beside GGUF rows, the runtime's system info, the machine's CPU features
OVER_MEMORY = "over memory budget"


@dataclass(frozen=True)
class BenchSettings(Settings):
    repeats: int = setting(3, "Timed generations per variant (after one warm-up); medians reported.", min=1)
    new_tokens: int = setting(64, "Tokens generated per timed run.", min=8)
    prompt_tokens: int = setting(128, "Prompt length of the timed runs (the profile's time-to-first-token budget "
                                      "is for 128).", min=1, cli=False)
    chunks: int = like(HeldOutSettings, "chunks")
    chunk_len: int = like(HeldOutSettings, "chunk_len")
    fidelity_prompts: int | None = setting(None, "Test prompts per domain the teacher answers for in-domain "
                                                 "fidelity [default: all].", min=1)
    fidelity_new_tokens: int = setting(128, "Length of the teacher's answers scored for in-domain fidelity.", min=1,
                                       max=2048)
    reference_answers: list[Path] = setting([], "The teacher's answers to held-out prompts and graded items (JSONL "
                                                 "from `edgedistill generate`), instead of --reference: fidelity on "
                                                 "the text (chrF, answer agreement), for a served teacher or one of "
                                                 "another tokenizer; repeatable.", exists="file")
    eval_every: int = setting(6, "Graded eval on every n-th item (0: no graded eval).", min=0)
    threads: int | None = setting(None, "Threads [default: the profile's, at most this machine's cores].", min=1)
    bandwidth: str | None = setting(None, "Memory bandwidth for the roofline: a value (15GB/s) or 'measure' (this "
                                          "machine, numpy copy) [default: the profile's].")
    data_dir: Path | None = setting(None, "calibration_data folder (held-out texts and eval sets).", exists="dir",
                                    flag="--data")
    kit_top_k: int = setting(512, "Reference log-probabilities kept per position in a device kit (--kit); the "
                                  "device's fidelity is measured against them, and so is this machine's beside its "
                                  "full-reference figures (on the demo's bundles top-512 holds 98% of the full KL, "
                                  "top-32 86-91%: benchmarks/results/bench/kit_top_k.md).", min=1, max=4096)
    max_kit_size: str = setting("2GB", "A device kit larger than this (bundles and reference data) is refused "
                                       "before it is written.")
    kit_offline: bool = setting(False, "Carry in the device kit every wheel its runtime installs from (for a device "
                                       "of this machine's architecture: about 80 MB more), so the device installs "
                                       "with no network; without it the device needs the package registry once.")
    timeout_s: float = setting(3600.0, "Per worker process.", min=0, min_open=True, cli=False)
    poll_s: float = setting(0.01, "Memory watch interval.", min=0, min_open=True, cli=False)

    def extra_problems(self) -> list[str]:
        from edgedistill.targets import parse_bandwidth, parse_bytes

        problems = []
        try:
            parse_bytes(self.max_kit_size, "max_kit_size")
        except (ValueError, EdgeDistillError):
            problems.append(f"max_kit_size={self.max_kit_size!r} must be a size like 500MB or 2GB")
        if self.bandwidth in (None, "measure"):
            return problems
        try:
            parse_bandwidth(self.bandwidth, "bandwidth")
        except (ValueError, EdgeDistillError):
            problems.append(f"bandwidth={self.bandwidth!r} must be a bandwidth like 15GB/s or 'measure'")
        return problems
