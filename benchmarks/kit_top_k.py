"""How many of the reference's log-probabilities a device kit keeps per position: the KL against the top-k (k + 1
bins) as a share of the full KL, and the reference data's size, for several k, on the demo's bundles.

The reference (the teacher's F16 GGUF) answers 4 test prompts per domain (bench.fidelity, cached); each variant is
scored teacher-forced on those answers as the bench scores it, against the full reference (sequence_stats) and
against its top-k (top_k_stats), in one run; the size is that of the compressed arrays a kit stores.

    make demo   # once: the bundles
    .venv/bin/python benchmarks/kit_top_k.py   # writes benchmarks/results/bench/kit_top_k.{json,md}
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from edgedistill.runinfo import run_record, write_result  # noqa: E402

VARIANTS = ["export/student/gguf-q4_k_m", "export/student/onnx-int8", "export-teacher/gguf-q8_0",
            "export-teacher/gguf-q4_k_m"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "build" / "demo" / "laptop", help="a run folder (make demo)")
    ap.add_argument("--variants", nargs="*", default=VARIANTS)
    ap.add_argument("--ks", default="8,32,128,512")
    ap.add_argument("--prompts", type=int, default=4, help="test prompts per domain")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench" / "kit_top_k")
    args = ap.parse_args()
    from edgedistill.bench import fidelity
    from edgedistill.data import default_data_dir
    from edgedistill.runtime.logits import log_softmax, open_logits, sequence_stats, top_k_reference, top_k_stats

    ks = [int(k) for k in args.ks.split(",")]
    ref_bundle = args.run / "export-teacher" / "gguf-f16"
    seqs = fidelity.teacher_answers(ref_bundle, fidelity.test_prompts(default_data_dir(), args.prompts), 128,
                                    threads=2)
    n_ctx = max(len(s["ids"]) for s in seqs)
    ref = open_logits(ref_bundle, n_ctx=n_ctx, threads=2)
    ref_lp, targets = [], []
    for s in seqs:
        rows = ref.logits([s["ids"]])[0][s["start"] - 1 : len(s["ids"]) - 1]
        ref_lp.append(log_softmax(rows).astype(np.float32))
        targets.append(s["ids"][s["start"]:])
    ref.close()
    tops = {k: [top_k_reference(lp, t, k) for lp, t in zip(ref_lp, targets)] for k in ks}
    sizes = {}
    for k in ks:
        buf = io.BytesIO()
        np.savez_compressed(buf, **{f"d{i}.{x}": a for i, t in enumerate(tops[k]) for x, a in t.items()})
        sizes[k] = buf.tell()
    results = {}
    for v in args.variants:
        runner = open_logits(args.run / v, n_ctx=n_ctx, threads=2)
        full, part = [], {k: [] for k in ks}
        for s, lp, t, i in zip(seqs, ref_lp, targets, range(len(seqs))):
            rows = runner.logits([s["ids"]])[0][s["start"] - 1 : len(s["ids"]) - 1]
            full.append(sequence_stats(lp, rows, t))
            for k in ks:
                part[k].append(top_k_stats(tops[k][i], rows, t))
        runner.close()
        kl = sum(x["kl"] for x in full) / sum(x["n"] for x in full)
        results[v] = {"full_kl": kl, "top_k_kl": {k: sum(x["kl"] for x in part[k]) / sum(x["n"] for x in part[k])
                                                  for k in ks}}
        results[v]["share"] = {k: results[v]["top_k_kl"][k] / kl for k in ks}
        print(v, f"{kl:.4f}", {k: round(s, 3) for k, s in results[v]["share"].items()})
    positions = sum(len(t) for t in targets)
    result = {"benchmark": "kit_top_k", **run_record(), "run": str(args.run), "prompts": len(seqs),
              "positions": positions, "ks": ks, "reference_bytes": sizes, "variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out.with_suffix(".json"), result)
    lines = [f"# {__doc__.splitlines()[0]}", "",
             f"{len(seqs)} test prompts ({positions} answer positions) answered by the teacher's "
             f"F16 reference ({ref_bundle}); machine: {result['machine']['cpu']}. Top-k KL as a share of the full KL:", "",
             "| variant | full KL | " + " | ".join(f"top-{k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    for v, r in results.items():
        lines.append(f"| {v} | {r['full_kl']:.4f} | " + " | ".join(f"{r['share'][k]:.3f}" for k in ks) + " |")
    lines += ["", "| k | reference data, compressed | per 1,000 positions |", "|---|---|---|"]
    lines += [f"| {k} | {sizes[k] / 1e6:.2f} MB | {sizes[k] / positions:.2f} kB |" for k in ks]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
