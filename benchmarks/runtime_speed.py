"""ONNX through onnxruntime-genai against GGUF through llama.cpp, at the same bit widths, measured in one run.

For the default teacher and a 10-layer student pruned from it (`edgedistill prune --layers 10 --hw-friendly`;
not distilled: quantization error is measured against each model's own float weights), every variant is
exported by `export_model` and validated on 16 held-out chunks of 512 tokens (KL and top-1 against the float32
torch model, in the variant's own runtime). Speed: each bundle in its own process (edgedistill's bench worker:
peak RSS of that process), one warm-up, then --repeats greedy generations of --new-tokens tokens after the same
chat prompt (end-of-turn ignored); medians. Same threads for every engine; ratios are between rows of this run.

    .venv/bin/python benchmarks/runtime_speed.py                # teacher and student, all variants
    .venv/bin/python benchmarks/runtime_speed.py --sweep        # the onnx:int4 settings, on the teacher

--sweep exports onnx:int4 of the teacher with each weight-only setting (fitting method, block size, symmetric or
not, 8-bit lm_head) and measures KL / top-1 / decode speed for each: how the default of onnx:int4 was chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.runinfo import write_result

HERE = Path(__file__).resolve().parent
PROMPT = [{"role": "user", "content": "A customer says their order NW-4411 arrived with a cracked housing. "
                                      "Write the reply, step by step, with what we need from them."}]
VARIANTS = ["onnx:fp32", "onnx:int8", "onnx:int4", "gguf:q8_0", "gguf:q4_k_m", "gguf:q4_0"]
SAME_BITS = [("onnx:int8", "gguf:q8_0"), ("onnx:int4", "gguf:q4_k_m"), ("onnx:int4", "gguf:q4_0")]
SWEEP = [  # (label, export options); block 32 symmetric unless said
    ("rtn", {"algorithm": "rtn"}),
    ("k_quant", {"algorithm": "k_quant"}),
    ("k_quant_mixed", {"algorithm": "k_quant_mixed"}),
    ("k_quant, 8-bit lm_head", {"algorithm": "k_quant", "head_bits": 8}),
    ("k_quant, asymmetric", {"algorithm": "k_quant", "symmetric": False}),
    ("rtn, asymmetric", {"algorithm": "rtn", "symmetric": False}),
    ("k_quant, block 64", {"algorithm": "k_quant", "block_size": 64}),
    ("k_quant, block 128", {"algorithm": "k_quant", "block_size": 128}),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def export(spec: str, out: Path, variants: list[str], threads: int, **options) -> None:
    from edgedistill.export.pipeline import ExportSettings, export_model

    if all((out / v.replace(":", "-") / "manifest.json").exists() for v in variants):
        return
    log(f"exporting {spec}: {', '.join(variants)} {options or ''}")
    export_model(spec, out, ExportSettings(variants=variants, chunks=16, chunk_len=512, threads=threads, force=True,
                                           **options))


def speed(bundle: Path, prompt_ids: list[int], args, work: Path) -> dict:
    from edgedistill.bench import run_worker

    job = {"phase": "speed", "bundle": str(bundle), "threads": args.threads, "n_ctx": 2048,
           "prompt_ids": prompt_ids, "new_tokens": args.new_tokens, "repeats": args.repeats}
    r = run_worker(job, work, None, 3600)
    if r["status"] != "ok":
        raise SystemExit(f"{bundle}: speed worker {r['status']}: {r['message']}")
    return r["result"]


def row(bundle: Path, prompt_ids: list[int], args, work: Path) -> dict:
    m = json.loads((bundle / "manifest.json").read_text())
    s = speed(bundle, prompt_ids, args, work)
    v = m["validation"]
    r = {"variant": f"{m['format']}:{m['scheme']}", "bundle": str(bundle), "model_bytes": m["model_bytes"],
         "bits_per_weight": m["bits_per_weight"], "options": m["quantization"].get("options", {}),
         "mean_kl": v["mean_kl"], "top1_agreement": v["top1_agreement"], "ppl_ratio": v["ppl_ratio"],
         "positions": v["positions"], "passed_tolerance": v["passed"],
         **{k: s[k] for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "ttft_s", "token_latency_p50_s",
                              "token_latency_p95_s", "peak_rss_bytes", "decode_tokens_per_s_all", "load_s")}}
    log(f"{r['variant']:<12} {r['model_bytes'] / 1e6:6.1f} MB  decode {r['decode_tokens_per_s']:6.1f} tok/s  "
        f"prefill {r['prefill_tokens_per_s']:6.1f}  KL {r['mean_kl']:.4f}  top-1 {100 * r['top1_agreement']:.1f}%")
    return r


def prompt_ids_of(bundle: Path) -> list[int]:
    from edgedistill.runtime import load

    with load(bundle) as m:
        return m.encode(m.render_chat(PROMPT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sweep", action="store_true", help="the onnx:int4 settings sweep instead")
    ap.add_argument("--work", type=Path, default=Path("build/bench-runtime"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from edgedistill.runinfo import run_record

    work = args.work
    settings = {"model": args.model, "threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats,
                "validation": "16 held-out chunks x 512 tokens (calibration_data/*/texts)"}
    if args.sweep:
        rows = []
        for label, opts in SWEEP:
            out = work / "sweep" / label.replace(", ", "-").replace(" ", "_")
            try:
                export(args.model, out, ["onnx:int4"], args.threads, **opts)
            except EdgeDistillError as e:  # a setting the builder refuses for this model's shapes
                log(f"{label}: {e}")
                rows.append({"setting": label, "options": opts, "error": str(e)})
                continue
            ids = prompt_ids_of(out / "onnx-int4")
            rows.append({"setting": label, **row(out / "onnx-int4", ids, args, work / "workers")})
        report = {"benchmark": "runtime_speed --sweep", **run_record(), "settings": settings, "rows": rows}
        out = args.out or HERE / "results" / "runtime" / "onnx_int4_sweep.json"
        write_result(out, report)
        md = ["| onnx:int4 setting | MB | bits/weight | mean KL | top-1 | ppl ratio | decode tok/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {r['setting']} | {r['model_bytes'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | {r['mean_kl']:.4f} | "
               f"{100 * r['top1_agreement']:.1f}% | {r['ppl_ratio']:.3f} | {r['decode_tokens_per_s']:.1f} |"
               if "error" not in r else f"| {r['setting']} | builder refused: {r['error'][-90:]} ||||||" for r in rows]
        out.with_suffix(".md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return

    student = work / "student-10l"
    if not (student / "config.json").exists():
        log("pruning the 10-layer student")
        subprocess.run([sys.executable, "-m", "edgedistill", "prune", args.model, "--layers", "10", "--hw-friendly",
                        "--out", str(student)], check=True)
    models, ratios = {}, {}
    for name, spec in (("teacher", args.model), ("student", str(student))):
        bundles = work / f"bundles-{name}"
        export(spec, bundles, VARIANTS, args.threads)
        ids = prompt_ids_of(bundles / "gguf-q8_0")
        rows = [row(bundles / v.replace(":", "-"), ids, args, work / "workers") for v in VARIANTS]
        models[name] = {"spec": spec, "prompt_tokens": len(ids), "rows": rows}
        by = {r["variant"]: r for r in rows}
        for onnx_v, gguf_v in SAME_BITS:
            ratios[f"{name}: {onnx_v} / {gguf_v} decode"] = (by[onnx_v]["decode_tokens_per_s"]
                                                            / by[gguf_v]["decode_tokens_per_s"])
    report = {"benchmark": "runtime_speed", **run_record(), "settings": settings, "models": models, "ratios": ratios}
    out = args.out or HERE / "results" / "runtime" / "runtime_speed.json"
    write_result(out, report)
    md = ["| model | variant | MB | bits/weight | decode tok/s | prefill tok/s | TTFT ms | peak RSS MB | mean KL | top-1 |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        md += [f"| {name} | {r['variant']} | {r['model_bytes'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | "
               f"{r['decode_tokens_per_s']:.1f} | {r['prefill_tokens_per_s']:.1f} | {1000 * r['ttft_s']:.0f} | "
               f"{r['peak_rss_bytes'] / 1e6:.0f} | {r['mean_kl']:.4f} | {100 * r['top1_agreement']:.1f}% |"
               for r in m["rows"]]
    md += ["", *(f"- {k}: x{v:.2f}" for k, v in ratios.items())]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
