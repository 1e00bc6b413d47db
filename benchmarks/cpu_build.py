"""What edgedistill's llama.cpp build gains against the plain AVX2 baseline, on this machine, measured with
llama-bench.

edgedistill compiles llama.cpp (the runtime and its tools) without `-march=native`: AVX2 on every x86-64, AVX-512
(with its VBMI / VNNI / BF16 extensions) where the machine has it, AMX never (edgedistill/formats/llamacpp_build.py),
so that ggml's AMX path (it crashes on Q8_0/Q4 weights, llama.cpp issue 20824) is never taken and a build never
holds instructions the CPU lacks. This script builds llama-bench from the same llama.cpp sources once more and
runs both on the same files, interleaved, in one run:

  installed  the installed tools' llama-bench (what every edgedistill install on this CPU uses)
  avx2       the x86-64 baseline every edgedistill install gets (only where the installed build is above it)

(Its version at commit 2983483 also built a GGML_NATIVE=ON (-march=native) llama-bench, to reproduce the reported
crash: the `native` column of results/runtime/cpu_build.md, SIGSEGV on every file. No build here uses -march=native
any more, not even for comparison.)

Files: the default teacher's Q4_K_M and Q8_0 (Q8_0: the type of the reported crash) and those of a 10-layer
student pruned from it (`edgedistill prune --layers 10 --hw-friendly`), exported by export_model. Figures:
llama-bench's pp128 and tg64 (tokens/s, its own warm-up and --reps repeats), median over --rounds rounds; ratios
to the installed build of the same round. A build that crashes on a file is recorded as such.

    .venv/bin/python benchmarks/cpu_build.py            # writes benchmarks/results/runtime/cpu_build.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgedistill.formats import llamacpp_tools
from edgedistill.formats.llamacpp_build import cpu_flags, flags_key
from edgedistill.runinfo import cpu_features, run_record, write_result

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_flags() -> dict[str, list[str]]:
    """The build beside the installed one: the AVX2 baseline (where the installed build is above it)."""
    installed = cpu_flags()
    baseline = cpu_flags(features=[f for f in cpu_features() if not f.startswith("avx512")])
    return {"avx2": baseline} if baseline != installed else {}


def build(name: str, flags: list[str], work: Path) -> Path:
    """llama-bench from the installed llama-cpp-python's llama.cpp sources, with `flags` for the CPU. The binary is
    named by its flags and this CPU's features: a work folder carried to another CPU builds it again there."""
    exe = work / f"llama-bench-{name}-{flags_key([*flags, platform.machine(), *cpu_features()])}"
    if exe.exists():
        return exe
    src = llamacpp_tools.source_dir()
    tree = work / f"build-{exe.name}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = [a for a in llamacpp_tools.cmake_args() if not a.startswith("-DGGML_")] + flags
    log(f"building llama-bench ({name}): {' '.join(flags)}")
    for cmd in (["cmake", "-S", str(src), "-B", str(tree), "-G", "Ninja", *args],
                ["cmake", "--build", str(tree), "--target", "llama-bench", "-j", str(os.cpu_count() or 1)]):
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    built = next(p for p in [tree / "bin" / "llama-bench", *tree.rglob("llama-bench")] if p.is_file())
    built.rename(exe)
    return exe


def files(work: Path, threads: int) -> dict[str, Path]:
    from edgedistill.export.pipeline import ExportSettings, export_model

    student = work / "student-10l"
    if not (student / "config.json").exists():
        log("pruning the 10-layer student")
        subprocess.run([sys.executable, "-m", "edgedistill", "prune", "smollm2-135m-instruct", "--layers", "10",
                        "--hw-friendly", "--out", str(student)], check=True)
    out = {}
    for who, spec in (("teacher", "smollm2-135m-instruct"), ("student", str(student))):
        dest = work / f"{who}-bundles"
        variants = ["gguf:q4_k_m", "gguf:q8_0"]
        if not all((dest / v.replace(":", "-") / "manifest.json").exists() for v in variants):
            log(f"exporting {who}: {', '.join(variants)}")
            export_model(spec, dest, ExportSettings(variants=variants, chunks=2, chunk_len=128, threads=threads,
                                                    force=True))
        for v in variants:
            folder = dest / v.replace(":", "-")
            out[f"{who} {v}"] = folder / json.loads((folder / "manifest.json").read_text())["model_file"]
    return out


def run_bench(exe: Path, model: Path, args) -> dict:
    cmd = [str(exe), "-m", str(model), "-p", str(args.prompt), "-n", str(args.new_tokens), "-t", str(args.threads),
           "-r", str(args.reps), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        why = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit {proc.returncode}")
        return {"error": why}
    rows = json.loads(proc.stdout)
    pp = next(r for r in rows if r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_prompt"] == 0)
    return {"pp": pp["avg_ts"], "tg": tg["avg_ts"], "model_type": pp.get("model_type")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="llama-bench -r")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, default=Path("build/cpu_build"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtime" / "cpu_build.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = files(args.work, args.threads)
    exes = {"installed": llamacpp_tools.tool("llama-bench")}
    flags = {"installed": cpu_flags(), **build_flags()}
    for name in flags:
        if name != "installed":
            exes[name] = build(name, flags[name], args.work)
    raw: dict = {m: {b: [] for b in exes} for m in models}
    for r in range(args.rounds):
        for m, path in models.items():
            for b, exe in exes.items():
                res = run_bench(exe, path, args)
                raw[m][b].append(res)
                log(f"round {r + 1} {m} {b}: {res}")
    table = {}
    for m in models:
        table[m] = {}
        for b in exes:
            ok = [x for x in raw[m][b] if "error" not in x]
            if len(ok) < len(raw[m][b]):
                table[m][b] = {"error": next(x["error"] for x in raw[m][b] if "error" in x),
                               "failed_rounds": len(raw[m][b]) - len(ok)}
                continue
            table[m][b] = {f"{k}_tokens_per_s": statistics.median(x[k] for x in ok) for k in ("pp", "tg")}
            table[m][b].update({f"{k}_min": min(x[k] for x in ok) for k in ("pp", "tg")})
            table[m][b].update({f"{k}_max": max(x[k] for x in ok) for k in ("pp", "tg")})
            table[m][b]["model_type"] = ok[0]["model_type"]
        base = table[m]["installed"]
        for b in exes:
            if b != "installed" and "error" not in table[m][b] and "error" not in base:
                # per round, then the median: the builds of one round ran back to back on the same machine state
                for k in ("pp", "tg"):
                    table[m][b][f"{k}_ratio_to_installed"] = statistics.median(
                        x[k] / y[k] for x, y in zip(raw[m][b], raw[m]["installed"]))
    report = {"benchmark": "cpu_build", **run_record(), "settings": vars(args) | {"work": str(args.work),
                                                                                   "out": str(args.out)},
              "builds": {b: " ".join(f) for b, f in flags.items()}, "results": table, "raw": raw}
    write_result(args.out, report)
    md = [f"# llama.cpp builds on {report['machine']['cpu']}", "",
          f"CPU features: {' '.join(report['machine']['cpu_features'])}; {args.threads} threads; llama-bench "
          f"pp{args.prompt} / tg{args.new_tokens}, {args.reps} reps, median of {args.rounds} interleaved rounds "
          f"(tokens/s; ratio: to the installed build, per round, median).", "",
          "| file | build | pp tok/s | tg tok/s | pp ratio | tg ratio |", "|---|---|---:|---:|---:|---:|"]
    for m, per in table.items():
        for b, x in per.items():
            if "error" in x:
                md.append(f"| {m} | {b} | {x['error']} ({x['failed_rounds']} of {args.rounds} rounds) | | | |")
            else:
                md.append(f"| {m} | {b} | {x['pp_tokens_per_s']:.0f} | {x['tg_tokens_per_s']:.1f} | "
                          f"{x.get('pp_ratio_to_installed', 1):.3f} | {x.get('tg_ratio_to_installed', 1):.3f} |")
    md += ["", "Builds:", ""] + [f"- {b}: `{f}`" for b, f in report["builds"].items()] + [""]
    args.out.with_suffix(".md").write_text("\n".join(md))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
