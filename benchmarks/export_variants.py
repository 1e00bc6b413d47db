"""Size, bits per weight and fidelity of every export variant of a model, measured in one run.

Runs `edgedistill export` (library form) with every registered scheme on MODEL (default: the default teacher),
validating each file in its own runtime against the float32 torch model on --chunks held-out chunks of
--chunk-len tokens from calibration_data's domain texts: mean KL(torch || variant), top-1 agreement and the
perplexity ratio. Variants over their tolerance are still measured (--force) and marked as failed.

    .venv/bin/python benchmarks/export_variants.py                 # the default teacher
    .venv/bin/python benchmarks/export_variants.py --model build/bench-distill/runs/10L-hw-forward_kl/student \\
        --out benchmarks/results/export_variants_student.json
    # GGUF only, plus the 4/5-bit types again with llama.cpp's importance matrix (--imatrix), same held-out text
    .venv/bin/python benchmarks/export_variants.py --variants gguf:f16,gguf:q8_0,gguf:q5_k_m,gguf:q4_k_m,gguf:q4_0 \
        --with-imatrix --out benchmarks/results/export/export_gguf_imatrix.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from edgedistill.runinfo import write_result

HERE = Path(__file__).resolve().parent

VARIANTS = ["gguf:f16", "gguf:q8_0", "gguf:q5_k_m", "gguf:q4_k_m", "gguf:q4_0", "onnx:fp32", "onnx:int8",
            "onnx:int4", "torch:bnb_int8", "torch:bnb_nf4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--chunk-len", type=int, default=512)
    ap.add_argument("--with-imatrix", action="store_true",
                    help="export the types that take an importance matrix a second time with --imatrix")
    ap.add_argument("--imatrix-chunks", type=int, default=32)
    ap.add_argument("--work", type=Path, default=Path("build/bench-export"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "export" / "export_variants.json")
    args = ap.parse_args()

    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.runinfo import run_record

    shutil.rmtree(args.work, ignore_errors=True)
    t0 = time.perf_counter()

    def step(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    variants = args.variants.split(",")
    results = export_model(args.model, args.work, ExportSettings(variants=variants, chunks=args.chunks,
                                                                 chunk_len=args.chunk_len, force=True), on_step=step)
    labels = list(variants)
    if args.with_imatrix:
        from edgedistill.quantize import get

        again = [v for v in variants if "imatrix" in get(v).options]
        results += export_model(args.model, args.work / "imatrix", ExportSettings(
            variants=again, chunks=args.chunks, chunk_len=args.chunk_len, force=True, imatrix=True,
            imatrix_chunks=args.imatrix_chunks), on_step=step)
        labels += [f"{v} +imatrix" for v in again]
    rows = []
    for label, r in zip(labels, results):
        m, man = r.metrics, r.manifest or {}
        q = man.get("quantization", {})
        rows.append({"variant": label, "passed": r.passed, "failures": r.error, "model_bytes": man.get("model_bytes"),
                     "bits_per_weight": man.get("bits_per_weight"),
                     "tensor_bits_per_weight": q.get("tensor_bits_per_weight"),
                     "fallback_share": q.get("fallback_share"), "tensor_types": q.get("tensor_types"),
                     "mean_kl": m["mean_kl"], "top1_agreement": m["top1_agreement"], "ppl_ratio": m["ppl_ratio"],
                     "ppl_reference": m["ppl_reference"], "greedy_match": m["greedy_match"],
                     "tolerance": man.get("validation", {}).get("tolerance"), "imatrix": q.get("imatrix")})
    report = {"benchmark": "export_variants", **run_record(), "model": args.model,
              "parameters": (results[0].manifest or {}).get("parameters") if results else None,
              "held_out": {"chunks": args.chunks, "chunk_len": args.chunk_len,
                           "positions": results[0].metrics["positions"] if results else 0},
              "total_s": time.perf_counter() - t0, "variants": rows}
    write_result(args.out, report)
    md = [f"Export variants of `{args.model}` ({report['parameters']:,} parameters); held-out text: {args.chunks} "
          f"chunks of {args.chunk_len} tokens. Measured by `benchmarks/export_variants.py` on {report['date']}.", "",
          "| variant | valid | size (MB) | bits/weight (file) | bits/weight (tensors) | mean KL | top-1 | ppl ratio |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tb = f"{r['tensor_bits_per_weight']:.2f}" if r["tensor_bits_per_weight"] else "-"
        md.append(f"| {r['variant']} | {'yes' if r['passed'] else 'no'} | {r['model_bytes'] / 1e6:.1f} | "
                  f"{r['bits_per_weight']:.2f} | {tb} | {r['mean_kl']:.4f} | {100 * r['top1_agreement']:.1f}% | "
                  f"{r['ppl_ratio']:.3f} |")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
