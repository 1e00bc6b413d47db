"""The device kit on the default teacher's demo bundles: made here, run by a runtime-only environment on fewer
cores, merged back.

  1. `edgedistill bench --kit` (as a library call) on a demo run's bundles (`make demo` writes them to
     build/demo/laptop): the student's and the teacher's variants against the teacher's F16 reference, under the
     laptop profile, with this machine's 2 threads; the kit keeps the reference's top-32 per position;
  2. the device: a virtual environment in another folder with the runtime extra only (edgedistill.runtime_venv: no
     torch, no transformers) runs `edgedistill kit run` on a copy of the kit under `taskset` on --device-cores
     cores (the profile's 8 threads, at most the cores it may use: 1 by default): the same CPU, fewer cores,
     nothing else imitated;
  3. `edgedistill kit merge`: the choice on the device's figures; both machines' figures side by side.

    make demo   # once: the bundles
    .venv/bin/python benchmarks/device_kit.py   # writes benchmarks/results/bench/device_kit.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from edgedistill.runinfo import run_record, write_result  # noqa: E402

VARIANTS = ["export/student/gguf-q4_k_m", "export/student/gguf-q8_0", "export/student/onnx-int4",
            "export/student/onnx-int8", "export-teacher/gguf-q8_0", "export-teacher/onnx-int8"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "build" / "demo" / "laptop", help="a run folder (make demo)")
    ap.add_argument("--target", default="laptop")
    ap.add_argument("--variants", nargs="*", default=VARIANTS, help="bundle folders, relative to --run")
    ap.add_argument("--device-cores", default="0", help="taskset's CPU list for the device (default: one core)")
    ap.add_argument("--fidelity-prompts", type=int, default=4, help="test prompts per domain")
    ap.add_argument("--eval-every", type=int, default=12)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgedistill-device-kit"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench" / "device_kit")
    args = ap.parse_args()
    from edgedistill import runtime_venv
    from edgedistill.bench import BenchSettings, bench
    from edgedistill.bench.kit import merge_kit
    from edgedistill.bench.rows import Row
    from edgedistill.targets import load_target

    bundles = [args.run / v for v in args.variants]
    missing = [b for b in bundles + [args.run / "export-teacher" / "gguf-f16"] if not (b / "manifest.json").is_file()]
    if missing:
        sys.exit(f"no bundle at {missing[0]}: run `make demo` first or pass --run")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    target = load_target(args.target)
    settings = dataclasses.replace(BenchSettings(), fidelity_prompts=args.fidelity_prompts, eval_every=args.eval_every)
    t0 = time.perf_counter()
    build = bench(bundles, target, args.work / "build", settings, teacher=args.run / "export-teacher" / "gguf-f16",
                  kit=args.work / "kit")
    build_s = time.perf_counter() - t0
    kit_bytes = sum(p.stat().st_size for p in (args.work / "kit").rglob("*") if p.is_file())

    bin_dir = runtime_venv.make(args.work / "device-venv")
    device = args.work / "device"
    shutil.copytree(args.work / "kit", device / "kit")  # the kit alone, as copied to a device
    t0 = time.perf_counter()
    subprocess.run(["taskset", "-c", args.device_cores, str(bin_dir / "edgedistill"), "kit", "run", "kit", "--out",
                    "results.json"], cwd=device, check=True)
    device_s = time.perf_counter() - t0
    results = json.loads((device / "results.json").read_text())
    merged = merge_kit(args.work / "kit", [device / "results.json"], args.work / "merged")

    rows = {}
    for v in merged["variants"]:
        r = Row.from_dict(v)
        if r.reference:
            continue
        b = r.build or {}

        def fig(speed, quality):
            dom = ((quality or {}).get("in_domain") or {}).get("overall") or {}
            agree = ((quality or {}).get("graded") or {}).get("answer_agreement") or {}
            return {"decode_tokens_per_s": (speed or {}).get("decode_tokens_per_s"), "ttft_s": (speed or {}).get("ttft_s"),
                    "peak_rss_bytes": (speed or {}).get("peak_rss_bytes"), "in_domain_top_k_kl": dom.get("mean_kl"),
                    "in_domain_top1": dom.get("top1_agreement"), "answer_agreement": agree.get("value")}

        bq = b.get("quality") or {}
        rows[r.name] = {"build": fig(b.get("speed"), {**(bq.get("top_k") or {}), "graded": bq.get("graded")}),
                        "device": fig(r.speed, r.quality), "meets_all_budgets_on_device": r.meets_all_budgets}
    result = {"benchmark": "device_kit", **run_record(), "run": str(args.run), "target": args.target,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "build_machine": {"machine": build["machine"], "threads": build["threads"]},
              "device": {"machine": results["machine"], "threads": results["threads"],
                         "cores_available": results["cores_available"], "runtimes": results["runtimes"]},
              "kit": {"bytes": kit_bytes, "top_k": merged["kit"]["top_k"], "bundles": len(bundles)},
              "seconds": {"bench_and_kit_on_build_machine": round(build_s, 1), "kit_run_on_device": round(device_s, 1)},
              "chosen": {"build_machine": build["chosen"], "device": merged["chosen"]},
              "verdict": {"build_machine": build["verdict"], "device": merged["verdict"]}, "variants": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result))
    shutil.copy2(args.work / "merged" / "bench.md", args.out.parent / "device_kit_merged_bench.md")
    print(args.out.with_suffix(".md").read_text())
    return 0


def markdown(r: dict) -> str:
    b, d = r["build_machine"], r["device"]

    def f(x, spec, scale=1.0):
        return "—" if x is None else format(x * scale, spec)

    lines = [f"# {__doc__.splitlines()[0]}", "",
             f"Profile {r['target']}; bundles from {r['run']}. Build machine: {b['machine']['cpu']}, {b['threads']} "
             f"threads, the full install. Device: {d['machine']['cpu']}, {d['threads']} thread(s) "
             f"({d['cores_available']} core(s) under taskset), the runtime extra only "
             f"({', '.join(f'{k} {v}' for k, v in d['runtimes'].items())}). Kit: {len(r['variants'])} bundles, "
             f"{r['kit']['bytes'] / 1e6:.0f} MB, the reference's top-{r['kit']['top_k']} per position. Fidelity on "
             "both machines against that top-k (KL over k + 1 bins); answer agreement on the graded items. Cold "
             f"timings, medians of 3. The bench and the kit took {r['seconds']['bench_and_kit_on_build_machine']:.0f} s "
             f"here, the kit's run {r['seconds']['kit_run_on_device']:.0f} s on the device.", "",
             "| variant | decode tok/s build / device | TTFT ms build / device | peak RSS MB build / device | "
             "in-domain KL build / device | top-1 % build / device | answers agree % build / device | "
             "meets every budget on the device |", "|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        x, y = v["build"], v["device"]
        lines.append(f"| {name} | {f(x['decode_tokens_per_s'], '.1f')} / {f(y['decode_tokens_per_s'], '.1f')} | "
                     f"{f(x['ttft_s'], '.0f', 1000)} / {f(y['ttft_s'], '.0f', 1000)} | "
                     f"{f(x['peak_rss_bytes'], '.0f', 1e-6)} / {f(y['peak_rss_bytes'], '.0f', 1e-6)} | "
                     f"{f(x['in_domain_top_k_kl'], '.3f')} / {f(y['in_domain_top_k_kl'], '.3f')} | "
                     f"{f(x['in_domain_top1'], '.1f', 100)} / {f(y['in_domain_top1'], '.1f', 100)} | "
                     f"{f(x['answer_agreement'], '.1f', 100)} / {f(y['answer_agreement'], '.1f', 100)} | "
                     f"{'yes' if v['meets_all_budgets_on_device'] else 'no'} |")
    lines += ["", f"Chosen on the build machine: {r['chosen']['build_machine'] or 'none'}; on the device's figures: "
                  f"{r['chosen']['device'] or 'none'}.", ""]
    lines += [f"> build machine: {x}" for x in r["verdict"]["build_machine"]]
    lines += [f"> device: {x}" for x in r["verdict"]["device"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
