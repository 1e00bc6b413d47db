"""The quality floors of the shipped profiles, measured on the teacher's own quantized files before any student.

The default teacher is exported to every variant a shipped profile allows, and to GGUF Q4_0, and each file is
benched against the teacher's F16 GGUF exactly as `edgedistill bench` does for students: in-domain fidelity on
the teacher's answers to all test prompts, answer agreement on the graded items, general text, with 95%
intervals. The profiles' floors are set from these figures (laptop: at least as close to the teacher as its own
Q4_0 file; see each YAML for the reasons of the others) and never moved to where a student lands.

    .venv/bin/python benchmarks/teacher_floors.py     # results/bench/teacher-floors/{bench.json,bench.md,floors.json}
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "bench" / "teacher-floors"
TEACHER = "smollm2-135m-instruct"
VARIANTS = ["gguf:q4_0", "gguf:q4_k_m", "gguf:q5_k_m", "gguf:q8_0", "onnx:int4", "onnx:int8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-floors"))
    ap.add_argument("--profile", default="laptop", help="the profile the files are benched under (speed budgets)")
    args = ap.parse_args()
    from edgedistill.bench import BenchSettings, bench
    from edgedistill.export.pipeline import ExportSettings, export_model
    from edgedistill.runinfo import write_result
    from edgedistill.targets import load_target

    work = args.work
    if not all((work / k.replace(":", "-") / "manifest.json").exists() for k in ["gguf:f16", *VARIANTS]):
        shutil.rmtree(work, ignore_errors=True)
        export_model(TEACHER, work, ExportSettings(variants=["gguf:f16", *VARIANTS], force=True))
    report = bench([work / k.replace(":", "-") for k in VARIANTS], load_target(args.profile), OUT, BenchSettings(),
                   teacher=work / "gguf-f16")
    floors = {}
    for r in report["variants"]:
        if r["reference"]:
            continue
        q = r["quality"]
        floors[r["key"]] = {"in_domain": q["in_domain"]["overall"], "general": q["general"],
                            "answer_agreement": q["graded"].get("answer_agreement"), "graded": q["graded"]["score"]}
    write_result(OUT / "floors.json", {"benchmark": "teacher_floors", "teacher": TEACHER,
                                       "reference": report["quality_reference"], "fidelity": report["fidelity"],
                                       "eval_items": report["eval_items"], "variants": floors})
    for k, f in floors.items():
        d, g, a = f["in_domain"], f["general"], f["answer_agreement"]
        print(f"{k:12s} in-domain KL {d['mean_kl']:.4f} {d['mean_kl_ci']}  top-1 {d['top1_agreement']:.4f} "
              f"{d['top1_agreement_ci']}  answers {a['value']:.3f} {a['ci']}  general KL {g['mean_kl']:.4f} "
              f"top-1 {g['top1_agreement']:.4f}")


if __name__ == "__main__":
    main()
