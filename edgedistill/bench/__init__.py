"""bench: every bundle through its real runtime, in its own process, under a device profile's limits.

For each bundle: a speed process (load time, peak RSS, time to first token, prefill and decode tokens/s,
per-token p50/p95), killed if its resident memory goes over the profile's budget; then a quality process:
fidelity to the teacher's reference bundle in-domain (its answers to the test prompts, teacher-forced) and on
general text, and greedy answers to graded items (score, and agreement with the teacher's answers), every figure
with a 95% bootstrap interval (bench.fidelity). Budgets and floors are checked with their margins (a floor whose
interval straddles it is "uncertain", not passed), and `choose` picks, among the variants that meet every one,
the first by the profile's objective (bench.objectives). The teacher's own quantized files are candidates like
the students', and the verdict says when quantizing the teacher is enough.

Runtime-only: numpy, tokenizers, onnxruntime / llama-cpp-python, psutil (matplotlib for the charts if present).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgedistill import children
from edgedistill.errors import EdgeDistillError
from edgedistill.paths import remove_scratch, scratch_dir
from edgedistill.settings import Settings, setting
from edgedistill.settings import write as write_settings
from edgedistill.targets import Target, as_dict

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3  # 2: in-domain fidelity, answer agreement, intervals, teacher variants as candidates;
# 3: cold timings, llama-bench beside GGUF rows, the runtime's system info, the machine's CPU features
OVER_MEMORY = "over memory budget"


@dataclass(frozen=True)
class BenchSettings(Settings):
    repeats: int = setting(3, "Timed generations per variant (after one warm-up); medians reported.", min=1)
    new_tokens: int = setting(64, "Tokens generated per timed run.", min=8)
    prompt_tokens: int = setting(128, "Prompt length of the timed runs (the profile's time-to-first-token budget "
                                      "is for 128).", min=1, cli=False)
    chunks: int = setting(16, "General-text windows for KL / top-1 / perplexity.", min=1, max=256)
    chunk_len: int = setting(256, "Tokens per window.", min=16, max=4096)
    fidelity_prompts: int | None = setting(None, "Test prompts per domain the teacher answers for in-domain "
                                                 "fidelity [default: all].", min=1)
    fidelity_new_tokens: int = setting(128, "Length of the teacher's answers scored for in-domain fidelity.", min=1,
                                       max=2048)
    eval_every: int = setting(6, "Graded eval on every n-th item (0: no graded eval).", min=0)
    threads: int | None = setting(None, "Threads [default: the profile's, at most this machine's cores].", min=1)
    bandwidth: str | None = setting(None, "Memory bandwidth for the roofline: a value (15GB/s) or 'measure' (this "
                                          "machine, numpy copy) [default: the profile's].")
    data_dir: Path | None = setting(None, "calibration_data folder (held-out texts and eval sets).", exists="dir",
                                    flag="--data")
    timeout_s: float = setting(3600.0, "Per worker process.", min=0, min_open=True, cli=False)
    poll_s: float = setting(0.01, "Memory watch interval.", min=0, min_open=True, cli=False)

    def extra_problems(self) -> list[str]:
        if self.bandwidth in (None, "measure"):
            return []
        from edgedistill.targets import parse_bandwidth

        try:
            parse_bandwidth(self.bandwidth, "bandwidth")
        except (ValueError, EdgeDistillError):
            return [f"bandwidth={self.bandwidth!r} must be a bandwidth like 15GB/s or 'measure'"]
        return []


def measure_bandwidth(size_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """This machine's memory bandwidth in bytes/s, as numpy sees it: the best of `repeats` copies of a
    `size_bytes` array (bytes read + bytes written, one thread; a lower bound of what decoding can use)."""
    import numpy as np

    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


# --- one bundle in one process ---------------------------------------------------------------------------------

def run_worker(job: dict, work: Path, memory_budget: int | None, timeout_s: float, poll_s: float = 0.01) -> dict:
    """Run edgedistill.bench.worker on `job` in a child process; kill it if its RSS goes over memory_budget.

    Returns {"status": "ok" | OVER_MEMORY | "failed" | "timed out", "result": {...}, "polled_peak_rss_bytes",
    "message"}."""
    import psutil

    work.mkdir(parents=True, exist_ok=True)
    name = f"{job['phase']}-{abs(hash(job['bundle'])) % 10**8}"
    job = {**job, "out": str(work / f"{name}.json")}
    (work / f"{name}.job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(job.get("threads") or 1)}
    peak, status, start = 0, None, time.monotonic()
    with open(work / f"{name}.log", "w") as stderr, children.started(
            [sys.executable, "-m", "edgedistill.bench.worker", str(work / f"{name}.job.json")],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env) as proc:
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss
            except psutil.Error:
                break
            peak = max(peak, rss)
            if memory_budget is not None and rss > memory_budget:
                proc.kill()
                status = OVER_MEMORY
                break
            if time.monotonic() - start > timeout_s:
                proc.kill()
                status = "timed out"
                break
            time.sleep(poll_s)
        proc.wait()
    out = Path(job["out"])
    if status is None:
        status = "ok" if proc.returncode == 0 and out.exists() else "failed"
    result = json.loads(out.read_text()) if status == "ok" else {}
    message = ""
    if status == "failed":
        lines = [ln for ln in (work / f"{name}.log").read_text(errors="replace").splitlines() if ln.strip()]
        message = lines[-1] if lines else f"exit code {proc.returncode}"
    elif status == OVER_MEMORY:
        message = f"resident memory reached {peak / 1e6:.0f} MB, over the {memory_budget / 1e6:.0f} MB budget"
    return {"status": status, "result": result, "polled_peak_rss_bytes": peak, "message": message}


# --- budgets, selection, Pareto front --------------------------------------------------------------------------

def _check(value, limit, higher_is_better: bool, missing: str = "not measured", ci=None) -> dict:
    """One budget: pass / fail, or "uncertain" when the value's 95% interval straddles the limit (not passed)."""
    if value is None:
        return {"value": None, "limit": limit, "status": "fail", "pass": False, "margin": None, "note": missing}
    ok = value >= limit if higher_is_better else value <= limit
    status = "pass" if ok else "fail"
    if ci is not None and ci[0] < ci[1] and ci[0] <= limit <= ci[1]:
        status = "uncertain"
    margin = (value - limit) if higher_is_better else (limit - value)
    out = {"value": value, "limit": limit, "status": status, "pass": status == "pass", "margin": margin,
           "margin_share": margin / limit if limit else None}
    if ci is not None:
        out["ci"] = list(ci)
    return out


def check_budgets(row: dict, target: Target, graded_eval: bool = True) -> dict:
    """Every budget and floor of the profile for one row, with the margin (positive: inside) and, for quality,
    the interval. Quality counts only against the teacher: export-time numbers against a bundle's own source do
    not. Without a graded eval (graded_eval False) the answer-agreement floor is left out, not passed."""
    q, lat = target.quality_floor, target.latency
    sp, qu = row.get("speed") or {}, row.get("quality") or {}
    vs_teacher = qu.get("against") == "reference"
    missing = "not measured" if not qu or vs_teacher else "not measured against the teacher (pass --teacher)"
    dom = ((qu.get("in_domain") or {}).get("overall") or {}) if vs_teacher else {}
    gen = (qu.get("general") or {}) if vs_teacher else {}
    agree = ((qu.get("graded") or {}).get("answer_agreement") or {}) if vs_teacher else {}

    def fid(block: dict, key: str, limit, higher: bool, why: str = missing) -> dict:
        return _check(block.get(key), limit, higher, why, block.get(f"{key}_ci"))

    checks = {
        "memory": _check(sp.get("peak_rss_bytes"), target.memory_budget_bytes, False),
        "time_to_first_token": _check(sp.get("ttft_s"), lat.time_to_first_token_s, False),
        "decode_tokens_per_s": _check(sp.get("decode_tokens_per_s"), lat.min_decode_tokens_per_s, True),
        "in_domain_mean_kl": fid(dom, "mean_kl", q.max_mean_kl, False),
        "in_domain_top1": fid(dom, "top1_agreement", q.min_top1_agreement, True),
    }
    if graded_eval:
        checks["answer_agreement"] = _check(agree.get("value"), q.min_answer_agreement, True,
                                            qu.get("graded_note") or missing, agree.get("ci"))
    if q.general_max_mean_kl is not None:
        checks["general_mean_kl"] = fid(gen, "mean_kl", q.general_max_mean_kl, False)
    if q.general_min_top1_agreement is not None:
        checks["general_top1"] = fid(gen, "top1_agreement", q.general_min_top1_agreement, True)
    return checks


def choose(rows: list[dict], objective: str = "fastest") -> dict | None:
    """The allowed, non-reference variant the profile's objective ranks first among those that pass every budget
    and floor (an "uncertain" floor is not passed); None when none does."""
    from edgedistill.targets.objectives import OBJECTIVES

    ok = [r for r in rows if r["allowed"] and not r["reference"] and not r.get("comparison") and r["budgets"]
          and all(c["pass"] for c in r["budgets"].values())]
    return max(ok, key=OBJECTIVES[objective].key) if ok else None


def pareto(points: list[tuple[str, float, float]]) -> set[str]:
    """Names of the points not dominated when both coordinates are to be maximised."""
    front = set()
    for name, x, y in points:
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for _, x2, y2 in points):
            front.add(name)
    return front


# --- the whole bench -------------------------------------------------------------------------------------------

def _bundle_info(path: Path) -> dict:
    from edgedistill.runtime.bundle import open_bundle

    m = open_bundle(path, verify=True)
    return {"bundle": str(path), "key": f"{m['format']}:{m['scheme']}", "format": m["format"], "scheme": m["scheme"],
            "model_bytes": m["model_bytes"], "parameters": m.get("parameters"),
            "bits_per_weight": m.get("bits_per_weight"), "source": (m.get("source") or {}).get("name"),
            "tokenizer_sha256": (m["files"].get("tokenizer.json") or {}).get("sha256")}


def _label(info: dict, names: dict) -> str:
    base = f"{info['source']}/{info['key']}"
    names[base] = names.get(base, 0) + 1
    return base if names[base] == 1 else f"{base}#{names[base]}"


class _Tok:
    """The bundle's tokenizer, called the way validate.held_out_chunks calls a Hugging Face tokenizer."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.t = Tokenizer.from_file(str(path / "tokenizer.json"))

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": self.t.encode(text, add_special_tokens=add_special_tokens).ids}


def bench(bundles: list[Path], target: Target, out_dir: Path, settings: BenchSettings | None = None,
          teacher: Path | None = None, comparison: list[Path] = (), progress=None) -> dict:
    """Measure every bundle under `target`; write bench.json, bench.md and charts to out_dir; return the report.

    teacher: the quality reference (measured without a memory cap), an exact export of the teacher. Its greedy
    answers to the test prompts are the in-domain fidelity set (bench.fidelity). bundles: the candidates, the
    teacher's own quantized files among them where wanted. comparison: bundles measured like the others but
    never chosen. The settings are also written to out_dir/settings.yaml."""
    settings = settings or BenchSettings()
    from edgedistill.bench import fidelity
    from edgedistill.data import default_data_dir
    from edgedistill.data.evaluate import REASONING_TOKENS, SHORT_ANSWER_TOKENS, find_eval_sets, load_eval_items
    from edgedistill.data.evaluate import wants_reasoning
    from edgedistill.export.validate import held_out_chunks
    from edgedistill.paths import check_writable_dir
    from edgedistill.runinfo import run_record

    if not bundles:
        raise EdgeDistillError("no bundles given: pass one or more folders made by `edgedistill export`")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeDistillError(f"--out {out_dir} is a file; give a folder for the report")
    check_writable_dir(out_dir, "--out")  # before a measurement that would be lost at the end
    infos = [_bundle_info(Path(b)) for b in bundles]
    comps = [_bundle_info(Path(b)) for b in comparison]
    ref_info = _bundle_info(Path(teacher)) if teacher else None
    every = infos + comps + ([ref_info] if ref_info else [])
    if len({i["tokenizer_sha256"] for i in every}) > 1:
        raise EdgeDistillError("the bundles do not share one tokenizer; bench compares variants of one teacher's family")
    threads = settings.threads or min(target.threads, os.cpu_count() or 1)
    bandwidth_source = "profile"
    bandwidth = target.memory_bandwidth_bytes_per_s
    if settings.bandwidth == "measure":
        bandwidth, bandwidth_source = measure_bandwidth(), "measured on this machine (numpy copy, one thread)"
    elif settings.bandwidth:
        from edgedistill.targets import parse_bandwidth

        bandwidth, bandwidth_source = parse_bandwidth(settings.bandwidth, "bandwidth"), "given"
    data_dir = Path(settings.data_dir) if settings.data_dir else default_data_dir()
    tok = _Tok(Path(every[0]["bundle"]))
    prompt = held_out_chunks(tok, 1, settings.prompt_tokens, data_dir)[0]
    chunks = held_out_chunks(tok, settings.chunks, settings.chunk_len, data_dir)
    domain: list[dict] = []
    if ref_info:
        prompts = fidelity.test_prompts(data_dir, settings.fidelity_prompts)
        if prompts:
            log.info("the reference answers %d test prompts (cached after the first time)", len(prompts))
            domain = fidelity.teacher_answers(Path(ref_info["bundle"]), prompts, settings.fidelity_new_tokens,
                                              threads=threads)
    eval_items, items = {}, []
    if settings.eval_every:
        for it in load_eval_items(find_eval_sets(data_dir))[:: settings.eval_every]:
            eval_items[it.id] = it
            items.append({"item": {**asdict(it), "choices": list(it.choices)},
                          "max_tokens": REASONING_TOKENS if wants_reasoning(it) else SHORT_ANSWER_TOKENS})
    work = scratch_dir(Path(tempfile.gettempdir()), ".edgedistill-bench-")
    longest = max([len(c) for c in chunks] + [len(d["ids"]) for d in domain])
    n_ctx = max(settings.prompt_tokens + settings.new_tokens + 8, longest, min(target.context_length, 2048))
    base = {"threads": threads, "n_ctx": n_ctx}
    names: dict = {}
    order = ([(ref_info, "reference")] if ref_info else []) + [(i, "comparison") for i in comps] + [
        (i, "candidate") for i in infos]
    task = progress.add_task("bench", total=len(order)) if progress else None
    rows: list[dict] = []
    ref_row = None
    try:
        for info, role in order:
            is_ref = role == "reference"
            label = _label(info, names) + ("" if role == "candidate" else f" ({role})")
            if progress:
                progress.update(task, description=f"bench {label}")
            log.info("%s: speed under a %.0f MB budget", label, target.memory_budget_bytes / 1e6)
            row = {"name": label, **{k: v for k, v in info.items() if k != "tokenizer_sha256"}, "reference": is_ref,
                   "comparison": role == "comparison", "allowed": info["key"] in target.formats,
                   "teacher_variant": bool(ref_info) and not is_ref and info["source"] == ref_info["source"],
                   "runtime": None}
            sp = run_worker({**base, "phase": "speed", "bundle": info["bundle"], "prompt_ids": prompt,
                             "new_tokens": settings.new_tokens, "repeats": settings.repeats},
                            work, target.memory_budget_bytes if not is_ref else None, settings.timeout_s,
                            settings.poll_s)
            row["status"], row["message"] = sp["status"], sp["message"]
            if sp["status"] == "ok":
                s = sp["result"]
                s["peak_rss_bytes"] = max(s["peak_rss_bytes"], sp["polled_peak_rss_bytes"])
                s.pop("decode_tokens_per_s_all", None)
                roof = bandwidth / info["model_bytes"]
                row["speed"] = {**s, "roofline_tokens_per_s": roof, "roofline_share": s["decode_tokens_per_s"] / roof}
                row["runtime"] = row["speed"].pop("runtime", None)
                if info["format"] == "gguf":
                    row["llama_bench"] = _llama_bench(info, row["speed"], settings, threads)
            else:
                row["speed"] = None
                if sp["status"] == OVER_MEMORY:
                    row["speed"] = {"peak_rss_bytes": sp["polled_peak_rss_bytes"]}
            fast_enough = (row["speed"] or {}).get("decode_tokens_per_s", 0) >= target.latency.min_decode_tokens_per_s
            qjob = {**base, "phase": "quality", "bundle": info["bundle"], "general": chunks, "domain": domain,
                    "save_dir": str(work / "reference") if is_ref else None,
                    "reference_dir": str(work / "reference") if ref_row else None,
                    "eval_items": items if (is_ref or (sp["status"] == "ok" and fast_enough)) else []}
            qu = run_worker(qjob, work, None, settings.timeout_s, settings.poll_s) if sp["status"] == "ok" else None
            row["quality"] = _quality(qu, row, ref_row, domain, eval_items, bool(items))
            if is_ref:
                ref_row = row
            rows.append(row)
            if progress:
                progress.advance(task)
    finally:
        remove_scratch(work)
    for r in rows:
        graded = bool(items) and ref_row is not None
        r["budgets"] = {} if r["reference"] else check_budgets(r, target, graded_eval=graded)
        r["meets_all_budgets"] = bool(r["budgets"]) and all(c["pass"] for c in r["budgets"].values())
        r["uncertain"] = sorted(k for k, c in r["budgets"].items() if c["status"] == "uncertain")
    chosen = choose(rows, target.objective)
    report = {"schema_version": SCHEMA_VERSION, "benchmark": "edgedistill bench", **run_record(),
              "target": as_dict(target), "objective": target.objective, "threads": threads,
              "machine_cores": os.cpu_count(), "bandwidth_bytes_per_s": bandwidth, "bandwidth_source": bandwidth_source,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
              "quality_reference": ref_row["name"] if ref_row else None,
              "fidelity": {"in_domain_prompts": len(domain),
                           "in_domain_answer_tokens": sum(len(d["ids"]) - d["start"] for d in domain),
                           "general_windows": len(chunks), "general_tokens": sum(len(c) for c in chunks),
                           "interval": "95% percentile bootstrap over prompts / windows / items (2,000 resamples)"},
              "eval_items": len(items),
              "budgets_left_out": [] if items and ref_row else ["answer_agreement (needs --teacher and a graded eval)"],
              "variants": rows, "chosen": chosen["name"] if chosen else None}
    report["verdict"] = verdict(report)
    write_report(report, out_dir)
    write_settings(settings, Path(out_dir) / "settings.yaml")
    return report


def _llama_bench(info: dict, speed: dict, settings: BenchSettings, threads: int) -> dict:
    """llama.cpp's llama-bench on the same file, prompt length, token count and threads, beside the bench's own
    figures (their ratios close to 1 say the bench's timing means what llama.cpp users quote). Left out, and said
    so, where the tool is not built (a device with the runtime extra only)."""
    from edgedistill.formats.llamacpp_tools import llama_bench
    from edgedistill.runtime.bundle import open_bundle

    model = Path(info["bundle"]) / open_bundle(info["bundle"], verify=False)["model_file"]
    try:
        lb = llama_bench(model, prompt_tokens=settings.prompt_tokens, new_tokens=settings.new_tokens,
                         threads=threads, repeats=settings.repeats)
    except EdgeDistillError as e:
        return {"note": f"not measured: {e}"}
    pp = lb.get(f"pp{settings.prompt_tokens}_tokens_per_s")
    tg = lb.get(f"tg{settings.new_tokens}_tokens_per_s")
    lb["prefill_ratio"] = speed["prefill_tokens_per_s"] / pp if pp else None  # bench / llama-bench
    lb["decode_ratio"] = speed["decode_tokens_per_s"] / tg if tg else None
    return lb


def _quality(qu: dict | None, row: dict, ref_row: dict | None, domain: list[dict], eval_items: dict,
             graded: bool) -> dict | None:
    """In-domain and general-text fidelity to the reference, with intervals; graded score and answer agreement."""
    from edgedistill.bench import fidelity
    from edgedistill.data import grading

    if qu is None or qu["status"] != "ok":
        return None
    res = qu["result"]
    out: dict = {}
    if row["reference"] or ref_row is not None:
        out["against"] = "itself" if row["reference"] else "reference"
        if res["domain"]:
            out["in_domain"] = fidelity.by_domain(res["domain"], [d["domain"] for d in domain])
        out["general"] = fidelity.summarize(res["general"])
    else:  # no teacher given: the export-time metrics, against the bundle's own source
        from edgedistill.runtime.bundle import open_bundle

        v = open_bundle(row["bundle"], verify=False).get("validation") or {}
        out["against"] = "source model (export-time validation)"
        out["general"] = {"mean_kl": v.get("mean_kl"), "top1_agreement": v.get("top1_agreement"),
                          "ppl_ratio": v.get("ppl_ratio")}
    if res["eval"]:
        by: dict = {}
        for a in res["eval"]:
            by.setdefault(a["domain"], []).append(a["correct"])
        items = [eval_items[a["id"]] for a in res["eval"]]
        g = {"score": fidelity.share([a["correct"] for a in res["eval"]]),
             "chance": sum(map(grading.chance, items)) / len(items),
             "by_domain": {d: sum(v) / len(v) for d, v in sorted(by.items())}}
        if row["reference"]:
            row["_answers"] = {a["id"]: a["answer"] for a in res["eval"]}
        elif ref_row is not None and ref_row.get("_answers"):
            ref = ref_row["_answers"]
            g["answer_agreement"] = fidelity.share([grading.same_answer(it, a["answer"], ref.get(a["id"]))
                                                    for it, a in zip(items, res["eval"]) if a["id"] in ref])
        out["graded"] = g
    elif graded:
        out["graded_note"] = "graded items skipped: below the profile's decode speed"
    return out


def verdict(report: dict) -> list[str]:
    """Two or three plain lines: what was chosen and why, whether quantizing the teacher is enough for the
    device or only a student fits, and what the nearest miss lacks."""
    rows = [r for r in report["variants"] if not r["reference"] and not r.get("comparison") and r["allowed"]]
    t = report["target"]["name"]
    obj = report["objective"]
    by_name = {r["name"]: r for r in rows}
    chosen = by_name.get(report["chosen"]) if report["chosen"] else None
    passing = [r for r in rows if r["meets_all_budgets"]]
    teacher_ok = [r for r in passing if r.get("teacher_variant")]
    student_ok = [r for r in passing if not r.get("teacher_variant")]
    lines = []
    if chosen:
        sp = chosen["speed"]["decode_tokens_per_s"]
        lines.append(f"{t}: chosen {chosen['name']} ({obj}: {sp:.0f} decode tokens/s, "
                     f"{chosen['speed']['peak_rss_bytes'] / 1e6:.0f} MB) — it meets every budget and floor.")
        if chosen.get("teacher_variant"):
            students = [r for r in rows if not r.get("teacher_variant")]
            lines.append(f"Quantizing the teacher is enough for {t}" + (
                "; no student was benched" if not students else
                "; no student variant meets every budget and floor" if not student_ok else
                f"; {len(student_ok)} student variant(s) also meet it but rank lower on {obj}") + ".")
        elif teacher_ok:
            best = max(teacher_ok, key=lambda r: r["speed"]["decode_tokens_per_s"])
            lines.append(f"The student is worth it on {obj}: {sp / best['speed']['decode_tokens_per_s']:.2f}x the "
                         f"decode speed of the best teacher variant that also qualifies ({best['name']}).")
        else:
            lines.append(f"Only a student fits {t}: no quantized teacher variant meets every budget.")
    else:
        lines.append(f"{t}: no variant meets every budget and floor; nothing is chosen.")
    misses = [r for r in rows if r is not chosen and not r["meets_all_budgets"] and r["budgets"]]
    if misses:
        near = min(misses, key=lambda r: (sum(not c["pass"] for c in r["budgets"].values()),
                                          -(r["speed"] or {}).get("decode_tokens_per_s", 0)))
        parts = []
        for k, c in near["budgets"].items():
            if c["pass"]:
                continue
            if c["value"] is None:
                parts.append(f"{k} {c['note']}")
                continue
            ci = f" [{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]" if c.get("ci") else ""
            parts.append(f"{k} {c['value']:.3g}{ci} vs {c['limit']:.3g}" + (" (uncertain)" if c["status"] ==
                                                                             "uncertain" else ""))
        lines.append(f"Nearest miss: {near['name']}: " + "; ".join(parts) + ".")
    return lines


# --- reports ---------------------------------------------------------------------------------------------------

def write_report(report: dict, out_dir: Path) -> None:
    """bench.json, bench.md and (with matplotlib) two charts, written to a temp folder and moved into place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in report["variants"]:
        r.pop("_answers", None)
    files = {"bench.json": json.dumps(report, indent=2, default=str) + "\n", "bench.md": markdown(report)}
    for name, text in files.items():
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
    try:
        charts(report, out_dir)
    except ImportError:
        log.warning("matplotlib is not installed: bench.json and bench.md written, no charts")


def _fmt(v, spec: str, scale: float = 1.0) -> str:
    return "—" if v is None else format(v * scale, spec)


def _ci(block: dict | None, key: str, spec: str, scale: float = 1.0) -> str:
    """value [low, high] of block[key] and block[key + '_ci'] (or a share's value / ci), '—' when absent."""
    if not block:
        return "—"
    v, ci = (block.get("value"), block.get("ci")) if key == "value" else (block.get(key), block.get(f"{key}_ci"))
    if v is None:
        return "—"
    text = format(v * scale, spec)
    return f"{text} [{format(ci[0] * scale, spec)}, {format(ci[1] * scale, spec)}]" if ci else text


def _features(report: dict) -> str:
    return " ".join(report["machine"].get("cpu_features") or []) or "features unknown"


def markdown(report: dict) -> str:
    t, f = report["target"], report.get("fidelity") or {}
    lines = [f"# bench: {t['name']}", "",
             f"{t['description']}. Measured with {report['threads']} threads on {report['machine']['cpu']} "
             f"({report['machine_cores']} cores; {_features(report)}); roofline at {report['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
             f"({report.get('bandwidth_source', 'profile')}); "
             f"{report['settings']['repeats']} repeats of {report['settings']['new_tokens']} tokens after a "
             f"{report['settings']['prompt_tokens']}-token prompt, medians.", "",
             f"Quality against {report['quality_reference'] or 'each bundle’s source model (export time)'}: "
             f"in-domain on the teacher's answers to {f.get('in_domain_prompts', 0)} test prompts "
             f"({f.get('in_domain_answer_tokens', 0)} answer tokens), general text on {f.get('general_windows', 0)} "
             f"windows ({f.get('general_tokens', 0)} tokens), {report['eval_items']} graded items; "
             f"[low, high]: {f.get('interval', '95% interval')}. Objective: {report.get('objective', 'fastest')}.",
             "", "Speed is cold: each timed run computes its whole prompt (no cached prefix), after one warm-up run. "
             "llama-bench: llama.cpp's own pp/tg figures for the same GGUF file, prompt, tokens and threads.",
             "", "| variant | status | file MB | peak RSS MB | load s | TTFT ms | prefill tok/s | decode tok/s | "
             "p50 / p95 ms | roofline | llama-bench pp / tg tok/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in report["variants"]:
        s = r["speed"] or {}
        lines.append(
            f"| {r['name']} | {r['status']} | {r['model_bytes'] / 1e6:.1f} | {_fmt(s.get('peak_rss_bytes'), '.0f', 1e-6)} | "
            f"{_fmt(s.get('load_s'), '.2f')} | {_fmt(s.get('ttft_s'), '.0f', 1000)} | "
            f"{_fmt(s.get('prefill_tokens_per_s'), '.0f')} | {_fmt(s.get('decode_tokens_per_s'), '.1f')} | "
            f"{_fmt(s.get('token_latency_p50_s'), '.1f', 1000)} / {_fmt(s.get('token_latency_p95_s'), '.1f', 1000)} | "
            f"{_fmt(s.get('roofline_share'), '.0%')} | {_llama_bench_cell(r, report)} |")
    runtimes = {}
    for r in report["variants"]:
        info = r.get("runtime") or {}
        line = info.get("system_info") or (f"providers {', '.join(info['providers'])}" if info.get("providers") else "")
        if line:
            runtimes.setdefault(f"{info['runtime']}: {line}", None)
    if runtimes:
        lines += ["", "What the runtimes use on this CPU:", ""] + [f"- {x}" for x in runtimes]
    lines += ["", "| variant | in-domain KL | in-domain top-1 % | answers agree % | graded % (chance) | "
                  "general KL | general top-1 % | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        q = r["quality"] or {}
        dom, gen, g = (q.get("in_domain") or {}).get("overall"), q.get("general"), q.get("graded") or {}
        failed = [k for k, c in r["budgets"].items() if c["status"] == "fail"]
        unsure = [k for k, c in r["budgets"].items() if c["status"] == "uncertain"]
        verdict = ("reference" if r["reference"] else "not in profile" if not r["allowed"]
                   else "all met" if not failed and not unsure else
                   "; ".join(x for x in ("misses " + ", ".join(failed) if failed else "",
                                         "uncertain " + ", ".join(unsure) if unsure else "") if x))
        if r.get("comparison"):
            verdict = "comparison (not a candidate): " + verdict
        if r["name"] == report["chosen"]:
            verdict = "**chosen** — " + verdict
        graded = (f"{_ci(g.get('score'), 'value', '.1f', 100)} ({100 * g['chance']:.0f})" if g.get("score") else "—")
        lines.append(f"| {r['name']} | {_ci(dom, 'mean_kl', '.3f')} | {_ci(dom, 'top1_agreement', '.1f', 100)} | "
                     f"{_ci(g.get('answer_agreement'), 'value', '.1f', 100)} | {graded} | "
                     f"{_ci(gen, 'mean_kl', '.3f')} | "
                     f"{_ci(gen, 'top1_agreement', '.1f', 100)} | {verdict} |")
    lines += ["", "Budgets (margin: how far inside the budget; negative: missed by that much; uncertain: the 95% "
                  "interval straddles the floor, so it is not passed):", ""]
    for r in report["variants"]:
        if not r["budgets"]:
            continue
        parts = []
        for k, c in r["budgets"].items():
            if c["value"] is None:
                parts.append(f"{k} {c['note']}")
            else:
                word = {"pass": "ok", "fail": "FAIL", "uncertain": "UNCERTAIN"}[c["status"]]
                parts.append(f"{k} {word} ({_fmt(c.get('margin_share'), '+.0%')})")
        lines.append(f"- {r['name']}: " + "; ".join(parts) + (f" — {r['message']}" if r["message"] else ""))
    lines += ["", f"Chosen: {report['chosen'] or 'none'}", ""] + [f"> {x}" for x in report.get("verdict", [])] + [""]
    return "\n".join(lines)


def _llama_bench_cell(r: dict, report: dict) -> str:
    lb = r.get("llama_bench")
    if not lb:
        return "—"
    st = report["settings"]
    pp, tg = lb.get(f"pp{st['prompt_tokens']}_tokens_per_s"), lb.get(f"tg{st['new_tokens']}_tokens_per_s")
    return "not built" if pp is None and tg is None else f"{_fmt(pp, '.0f')} / {_fmt(tg, '.1f')}"


def _fidelity_point(r: dict) -> tuple[float, list[float] | None] | None:
    """The chart's y: in-domain top-1 with its interval, else general text's."""
    q = r["quality"] or {}
    for block in ((q.get("in_domain") or {}).get("overall"), q.get("general")):
        if block and block.get("top1_agreement") is not None:
            return block["top1_agreement"], block.get("top1_agreement_ci")
    return None


def charts(report: dict, out_dir: Path) -> list[Path]:
    """quality_vs_speed.png and quality_vs_memory.png: one point per variant, Pareto front marked, budgets drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report["target"]
    pts = [r for r in report["variants"] if (r["speed"] or {}).get("decode_tokens_per_s") and _fidelity_point(r)]
    written = []
    specs = [("quality_vs_speed.png", "decode tokens/s", lambda r: r["speed"]["decode_tokens_per_s"], 1,
              t["latency"]["min_decode_tokens_per_s"]),
             ("quality_vs_memory.png", "peak RSS (MB)", lambda r: r["speed"]["peak_rss_bytes"] / 1e6, -1,
              t["memory_budget_bytes"] / 1e6)]
    for fname, xlabel, xof, sign, budget in specs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        front = pareto([(r["name"], sign * xof(r), _fidelity_point(r)[0]) for r in pts])
        for r in pts:
            on = r["name"] in front
            y, ci = _fidelity_point(r)
            if ci:
                ax.errorbar(xof(r), 100 * y, yerr=[[100 * (y - ci[0])], [100 * (ci[1] - y)]], fmt="none",
                            ecolor="tab:gray", elinewidth=1, capsize=2, zorder=2)
            ax.scatter(xof(r), 100 * y, s=60 if on else 30, marker="*" if r["name"] == report["chosen"] else "o",
                       color="tab:red" if on else "tab:gray", zorder=3)
            ax.annotate(r["name"], (xof(r), 100 * y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        line = sorted((xof(r), 100 * _fidelity_point(r)[0]) for r in pts if r["name"] in front)
        if len(line) > 1:
            ax.plot(*zip(*line), color="tab:red", lw=1, label="Pareto front")
        ax.axvline(budget, color="tab:blue", ls="--", lw=1, label="budget")
        ax.axhline(100 * t["quality_floor"]["min_top1_agreement"], color="tab:green", ls=":", lw=1,
                   label="quality floor (top-1)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("in-domain top-1 agreement with the teacher (%, 95% CI)")
        ax.set_title(f"{t['name']}: {fname[:-4].replace('_', ' ')}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
