"""What the calibration data holds, and whether any near-duplicate crosses a split boundary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgedistill.data import SPLITS
from edgedistill.data.dedup import near_duplicate_pairs
from edgedistill.data.load import DataError, load_eval, load_prompts, load_texts
from edgedistill.data.split import prompt_text


def domains(data_dir: Path) -> list[Path]:
    found = sorted(p for p in Path(data_dir).iterdir() if p.is_dir() and (p / "prompts").is_dir())
    if not found:
        raise DataError(f"no <domain>/prompts/ folders under {data_dir}")
    return found


def cross_split_leaks(data_dir: Path, threshold: float = 0.5) -> list[dict]:
    """Near-duplicate pairs whose two sides are in different sets (train / validation / test / eval), over
    all domains at once: a training prompt that is a light edit of a held-out one would inflate scores."""
    ids, sets, texts = [], [], []
    for d in domains(data_dir):
        for split in SPLITS:
            for p in load_prompts(d / "prompts" / f"{split}.jsonl")[0]:
                ids.append(p.id), sets.append(split), texts.append(prompt_text(p))
        if (d / "eval.jsonl").is_file():
            for it in load_eval(d / "eval.jsonl")[0]:
                ids.append(it.id), sets.append("eval"), texts.append(it.prompt)
    return [
        {"a": ids[i], "a_set": sets[i], "b": ids[j], "b_set": sets[j], "similarity": round(sim, 3)}
        for i, j, sim in near_duplicate_pairs(texts, threshold)
        if sets[i] != sets[j]
    ]


def data_stats(data_dir: Path, tokenizer_spec: str) -> dict:
    from edgedistill.models.locate import load_tokenizer

    tok = load_tokenizer(tokenizer_spec)

    def ntok(text: str) -> int:
        return len(tok(text, add_special_tokens=False).input_ids)

    out = {"tokenizer": tokenizer_spec, "domains": {}}
    for d in domains(data_dir):
        prompts = {s: load_prompts(d / "prompts" / f"{s}.jsonl")[0] for s in SPLITS}
        evals = load_eval(d / "eval.jsonl")[0] if (d / "eval.jsonl").is_file() else []
        texts = load_texts(d / "texts") if (d / "texts").is_dir() else []
        out["domains"][d.name] = {
            "prompts": {s: len(v) for s, v in prompts.items()},
            "prompt_tokens": sum(ntok(prompt_text(p)) for v in prompts.values() for p in v),
            "prompt_categories": dict(Counter(p.category for v in prompts.values() for p in v)),
            "reasoning_prompts": sum(p.reasoning for v in prompts.values() for p in v),
            "eval": dict(Counter(it.task for it in evals)),
            "eval_tokens": sum(ntok(it.prompt) for it in evals),
            "text_files": len(texts),
            "text_tokens": sum(ntok(t) for _, t in texts),
            "text_tokens_per_file": {name: ntok(t) for name, t in texts},
        }
    out["leaks"] = cross_split_leaks(data_dir)
    return out
