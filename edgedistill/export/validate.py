"""Does an exported or quantized file still behave like the float32 PyTorch model it came from?

Every artifact is run in the runtime that will use it (llama-cpp-python for GGUF, onnxruntime for ONNX, torch for
bitsandbytes) on the same token chunks as the reference, and compared position by position:
- mean KL(reference || artifact) over all positions (nats),
- top-1 agreement (same argmax),
- perplexity ratio: exp(mean next-token NLL of the artifact − that of the reference) on the chunk's own text.
Formats that should be exact (F16 GGUF, fp32 ONNX) are also checked for token-for-token greedy generation.

The chunks come from the domain texts of calibration_data/ (held out from quantization calibration, which uses
the train prompts), spread evenly over all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.logits import log_softmax, sequence_stats
from edgedistill.models.generate import torch_greedy, torch_logits  # noqa: F401  (export's reference)

log = logging.getLogger(__name__)

GREEDY_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about keeping a workshop floor clean.",
    "List three ways to save time in meetings.",
)


@dataclass(frozen=True)
class Metrics:
    mean_kl: float
    top1_agreement: float
    ppl_reference: float
    ppl: float
    ppl_ratio: float
    positions: int
    chunks: int
    chunk_len: int
    greedy_match: bool | None = None  # None: not checked for this artifact

    def as_dict(self) -> dict:
        return asdict(self)


def held_out_chunks(tokenizer, n_chunks: int = 4, chunk_len: int = 256, data_dir: Path | None = None) -> list[list[int]]:
    """n_chunks token windows of chunk_len, spread evenly over the interleaved domain texts."""
    from edgedistill.data import default_data_dir, load_texts

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    folders = sorted(p for p in data_dir.glob("*/texts") if p.is_dir())
    if not folders:
        raise EdgeDistillError(f"no */texts folders under {data_dir}: validation needs held-out text")
    from edgedistill.models.generate import leading_ids

    ids: list[int] = []
    for folder in folders:
        for _, text in load_texts(folder):
            ids += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    lead = leading_ids(tokenizer)  # each window starts as the model expects a text to (Gemma: with <bos>)
    chunk_len -= len(lead)
    n_windows = len(ids) // chunk_len
    if n_windows < 1:
        raise EdgeDistillError(f"the texts under {data_dir} hold {len(ids)} tokens, fewer than one chunk of {chunk_len}")
    n_chunks = min(n_chunks, n_windows)
    starts = [int(i * n_windows / n_chunks) * chunk_len for i in range(n_chunks)]
    return [lead + ids[s : s + chunk_len] for s in starts]


def compare(reference: Iterable[np.ndarray], candidate: Iterable[np.ndarray], chunks: Sequence[Sequence[int]],
            greedy_match: bool | None = None) -> Metrics:
    """Metrics over aligned per-chunk logits, each (T, V): KL and top-1 over every position, perplexity over
    the chunk's own next tokens."""
    stats = [sequence_stats(log_softmax(ref), cand, ids[1:])
             for ref, cand, ids in zip(reference, candidate, chunks, strict=True)]
    n, n_next = sum(s["n"] for s in stats), sum(s["n_next"] for s in stats)
    ppl_ref = float(np.exp(sum(s["nll_ref"] for s in stats) / n_next))
    ppl = float(np.exp(sum(s["nll"] for s in stats) / n_next))
    return Metrics(mean_kl=sum(s["kl"] for s in stats) / n, top1_agreement=sum(s["agree"] for s in stats) / n,
                   ppl_reference=ppl_ref, ppl=ppl, ppl_ratio=ppl / ppl_ref, positions=int(n), chunks=len(chunks),
                   chunk_len=len(chunks[0]), greedy_match=greedy_match)


# --- logits from each runtime --------------------------------------------------------------------------------

def greedy_prompts(tokenizer) -> list[list[int]]:
    from edgedistill.models.generate import chat_ids

    out = []
    for text in GREEDY_PROMPTS:
        msgs = [{"role": "user", "content": text}]
        out.append(chat_ids(tokenizer, msgs))
    return out


def validate(reference_model, tokenizer, candidate_logits: Callable[[list[list[int]]], list[np.ndarray]],
             chunks: list[list[int]], *, reference_logits: list[np.ndarray] | None = None,
             candidate_greedy: Callable[[list[int], int], list[int]] | None = None, greedy_tokens: int = 16) -> Metrics:
    """Compare a candidate runtime with the float32 torch model; greedy generation too when candidate_greedy."""
    ref = reference_logits if reference_logits is not None else torch_logits(reference_model, chunks)
    match = None
    if candidate_greedy is not None:
        match = True
        for ids in greedy_prompts(tokenizer):
            want = torch_greedy(reference_model, ids, greedy_tokens)
            got = candidate_greedy(ids, greedy_tokens)
            if got[: len(want)] != want:
                log.warning("greedy tokens differ: reference %s, candidate %s", want, got)
                match = False
                break
    return compare(ref, candidate_logits(chunks), chunks, greedy_match=match)
