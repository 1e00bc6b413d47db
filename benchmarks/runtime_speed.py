"""Decode speed of our ONNX loop against optimum's ORTModelForCausalLM (same ONNX file, same threads) and against
llama-cpp-python on GGUF files of the same model, measured in one run.

Every engine generates exactly --new-tokens greedy tokens after the same chat prompt (end-of-turn ignored);
each (engine, file) pair is timed --repeats times after one warm-up; medians are reported. Engines run one after
another in this process, so they see the same machine state; ratios are taken between rows of the same run.

    .venv/bin/python benchmarks/runtime_speed.py                  # default teacher, 2 threads
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from edgedistill.runinfo import write_result

HERE = Path(__file__).resolve().parent
PROMPT = [{"role": "user", "content": "A customer says their order NW-4411 arrived with a cracked housing. "
                                      "Write the reply, step by step, with what we need from them."}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="onnx:fp32,onnx:int8,gguf:q8_0,gguf:f16")
    ap.add_argument("--work", type=Path, default=Path("build/bench-runtime"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtime" / "runtime_speed.json")
    args = ap.parse_args()

    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.models.pull import pull
    from edgedistill.runinfo import run_record
    from edgedistill.runtime import load
    from edgedistill.runtime.measure import summarize, time_generation

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    bundles = args.work / "bundles"
    wanted = args.variants.split(",")
    have = [v for v in wanted if (bundles / v.replace(":", "-") / "manifest.json").exists()]
    if have != wanted:
        shutil.rmtree(bundles, ignore_errors=True)
        log(f"exporting {args.model}: {', '.join(wanted)}")
        export_model(args.model, bundles, ExportSettings(variants=wanted, chunks=2, threads=args.threads))

    rows = []

    def record(engine: str, file: Path, timings, note: str = "") -> None:
        s = summarize(timings)
        row = {"engine": engine, "file": str(file), "file_bytes": file.stat().st_size, "note": note, **s}
        rows.append(row)
        log(f"{engine:<28} {file.parent.name + '/' + file.name:<44} decode {s['decode_tokens_per_s']:6.1f} tok/s, "
            f"prefill {s['prefill_tokens_per_s']:6.1f} tok/s, ttft {1000 * s['ttft_s']:.0f} ms")

    def ours(variant: str):
        model = load(bundles / variant.replace(":", "-"), threads=args.threads)
        ids = model.encode(model.render_chat(PROMPT))
        time_generation(model, ids, 8)  # warm-up
        runs = [time_generation(model, ids, args.new_tokens) for _ in range(args.repeats)]
        engine = "edgedistill ONNX loop" if variant.startswith("onnx") else "llama-cpp-python (edgedistill)"
        record(engine, model.path / model.manifest["model_file"], runs, variant)
        model.close()
        return ids

    prompt_ids = None
    for v in wanted:
        if v.startswith("onnx"):
            prompt_ids = ours(v)
            _optimum(bundles / v.replace(":", "-"), prompt_ids, args, record)
        else:
            ours(v)

    teacher_dir, _ = pull(args.model)
    for q in sorted((teacher_dir / "original").glob("*.gguf")):
        _llama_raw(q, prompt_ids, args, record)

    by = {(r["engine"], r["note"]): r["decode_tokens_per_s"] for r in rows}
    ratios = {}
    for v in wanted:
        if v.startswith("onnx") and ("optimum ORTModelForCausalLM", v) in by:
            ratios[f"{v}: edgedistill / optimum"] = by[("edgedistill ONNX loop", v)] / by[("optimum ORTModelForCausalLM", v)]
    best_llama = max((r for r in rows if r["engine"].startswith("llama")), key=lambda r: r["decode_tokens_per_s"])
    best_onnx = max((r for r in rows if r["engine"] == "edgedistill ONNX loop"), key=lambda r: r["decode_tokens_per_s"])
    ratios["best edgedistill ONNX / best llama-cpp-python"] = (best_onnx["decode_tokens_per_s"]
                                                               / best_llama["decode_tokens_per_s"])
    report = {"benchmark": "runtime_speed", **run_record(), "settings": {
        "model": args.model, "threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "prompt_tokens": len(prompt_ids)}, "rows": rows, "ratios": ratios}
    write_result(args.out, report)
    md = ["| engine | file | MB | decode tok/s (median) | prefill tok/s | TTFT ms | p50 / p95 ms per token |",
          "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['engine']} | {Path(r['file']).parent.name}/{Path(r['file']).name} | "
                  f"{r['file_bytes'] / 1e6:.1f} | {r['decode_tokens_per_s']:.1f} | {r['prefill_tokens_per_s']:.1f} | "
                  f"{1000 * r['ttft_s']:.0f} | {1000 * r['token_latency_p50_s']:.1f} / "
                  f"{1000 * r['token_latency_p95_s']:.1f} |")
    md += ["", *(f"- {k}: x{v:.2f}" for k, v in ratios.items())]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _optimum(bundle: Path, prompt_ids: list[int], args, record) -> None:
    """optimum's ORTModelForCausalLM on the same model.onnx, timed token by token through a streamer."""
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from edgedistill.runtime.measure import GenerationTiming

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    torch.set_num_threads(args.threads)
    model = ORTModelForCausalLM.from_pretrained(bundle, session_options=opts, provider="CPUExecutionProvider",
                                                use_cache=True, use_io_binding=False)

    class Stamps(BaseStreamer):
        def __init__(self):
            self.t, self.first = [], True

        def put(self, value):
            if self.first:  # generate() puts the prompt first
                self.first = False
                return
            self.t.append(time.perf_counter())

        def end(self):
            pass

    ids = torch.tensor([prompt_ids])

    def once(n):
        s = Stamps()
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       streamer=s, pad_token_id=0)
        return GenerationTiming.from_stamps(len(prompt_ids), start, s.t)

    once(8)
    runs = [once(args.new_tokens) for _ in range(args.repeats)]
    record("optimum ORTModelForCausalLM", bundle / "model.onnx", runs, bundle.name.replace("-", ":", 1))


def _llama_raw(path: Path, prompt_ids: list[int], args, record) -> None:
    """llama-cpp-python on a GGUF file that is not a bundle (the teacher's own quantized file)."""
    import llama_cpp

    from edgedistill.runtime.measure import GenerationTiming

    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_threads=args.threads, verbose=False)

    def once(n):
        t, start = [], time.perf_counter()
        for tid in llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            t.append(time.perf_counter())
            if len(t) == n:
                break
        return GenerationTiming.from_stamps(len(prompt_ids), start, t)

    once(8)
    runs = [once(args.new_tokens) for _ in range(args.repeats)]
    record("llama-cpp-python", path, runs, "teacher's own file")
    llm.close()


if __name__ == "__main__":
    main()
