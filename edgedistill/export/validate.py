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
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgedistill.errors import EdgeDistillError

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


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def sequence_stats(ref_lp: np.ndarray, cand_logits: np.ndarray, targets) -> dict:
    """Sums over the scored rows of one sequence. ref_lp: the reference's log-probabilities (T, V); cand_logits:
    the variant's logits at the same rows; targets: the next token of each row (the last row may have none).

    Returns kl (Σ KL(ref || cand)), agree (rows with the same argmax), n (rows), nll_ref and nll (Σ next-token
    negative log-likelihood of each model over the rows with a target), n_next."""
    v = min(ref_lp.shape[-1], cand_logits.shape[-1])  # runtimes may pad the vocabulary
    lr = ref_lp[:, :v].astype(np.float64)
    # renormalised in float64: over the shared rows, and for log-probs stored in float32 (the bench's reference)
    lr = lr - np.log(np.exp(lr).sum(-1, keepdims=True))
    lc = log_softmax(cand_logits[:, :v])
    t = np.asarray(targets, dtype=np.int64)[: lr.shape[0]]
    rows = np.arange(len(t))
    return {"kl": float((np.exp(lr) * (lr - lc)).sum()), "agree": int((lr.argmax(-1) == lc.argmax(-1)).sum()),
            "n": int(lr.shape[0]), "nll_ref": float(-lr[rows, t].sum()), "nll": float(-lc[rows, t].sum()),
            "n_next": int(len(t))}


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

def torch_logits(model, chunks) -> list[np.ndarray]:
    import torch

    out = []
    with torch.inference_mode():
        for ids in chunks:
            out.append(model(torch.tensor([ids])).logits[0].float().numpy())
    return out


def torch_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


class GGUFRunner:
    """llama-cpp-python over one GGUF file, all logits kept."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                                   n_threads=threads or os.cpu_count(), seed=0)

    def logits(self, chunks) -> list[np.ndarray]:
        out = []
        for ids in chunks:
            self.llm.reset()
            self.llm.eval(list(ids))
            out.append(np.array(self.llm.scores[: len(ids)], dtype=np.float32))
        return out

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        self.llm.reset()
        toks = []
        for t in self.llm.generate(list(prompt_ids), top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            toks.append(int(t))
            if len(toks) == n:
                break
        return toks

    def close(self) -> None:
        self.llm.close()


class ONNXRunner:
    """onnxruntime-genai over a folder its model builder wrote: the runtime the bundle will run in."""

    def __init__(self, folder: Path, threads: int | None = None):
        from edgedistill.runtime import onnx as rt

        self.rt, self.folder = rt, Path(folder)
        self.model = rt.open_model(self.folder, threads)
        self.window = rt.sliding_window(self.folder)

    def logits(self, chunks) -> list[np.ndarray]:
        return [self.rt.prompt_logits(self.model, list(ids), self.window) for ids in chunks]

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        from edgedistill.runtime import GenerationConfig

        # no id is treated as the end here: the runtime itself stops after an end-of-generation id, which is kept,
        # as torch's generate and llama.cpp keep it
        return list(self.rt.generate_ids(self.model, list(prompt_ids), GenerationConfig(max_tokens=n), set(),
                                             self.window))

    def close(self) -> None:
        self.model = None


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
