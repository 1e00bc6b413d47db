"""The whole bench: every bundle through its worker processes, the quality against the teacher's reference, the
budgets checked and the report written.

In three parts that a device kit (bench.kit) reuses as they are: the `Plan` (what every bundle is measured on,
JSON-able), `measure` (one bundle's worker processes: the raw results a device sends back) and `fill` (a row from
those raw results), and `finish` (budgets, choice, report)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgedistill.bench.budgets import check_budgets, choose, verdict
from edgedistill.bench.report import write_report
from edgedistill.bench.rows import Row
from edgedistill.bench.settings import OVER_MEMORY, SCHEMA_VERSION, BenchSettings
from edgedistill.bench.supervise import measure_bandwidth, run_worker
from edgedistill.errors import EdgeDistillError
from edgedistill.paths import remove_scratch, scratch_dir
from edgedistill.settings import write as write_settings
from edgedistill.targets import Target, as_dict
from edgedistill.runinfo import available_cores

log = logging.getLogger(__name__)


def _bundle_info(path: Path | tuple[Path, Path]) -> dict:
    """What the bench needs of a bundle, or of a (base bundle, LoRA adapter bundle) pair measured as one model: its
    bytes are the base's and the adapter's (both are read for every token)."""
    from edgedistill.runtime.bundle import adapter_args, open_bundle

    path, adapter = (Path(path[0]), Path(path[1])) if isinstance(path, tuple) else (Path(path), None)
    m = open_bundle(path, verify=True)
    info = {"bundle": str(path), "key": f"{m['format']}:{m['scheme']}", "format": m["format"], "scheme": m["scheme"],
            "model_bytes": m["model_bytes"], "parameters": m.get("parameters"),
            "bits_per_weight": m.get("bits_per_weight"), "source": (m.get("source") or {}).get("name"),
            "tokenizer_sha256": (m["files"].get("tokenizer.json") or {}).get("sha256")}
    if adapter is not None:
        adapter_bytes = adapter_args(m, path, adapter)["adapter"].stat().st_size
        info.update(adapter=str(adapter), adapter_bytes=adapter_bytes, model_bytes=m["model_bytes"] + adapter_bytes)
    return info


def _label(info: dict, names: dict) -> str:
    base = f"{info['source']}/{info['key']}" + (" + adapter" if info.get("adapter") else "")
    names[base] = names.get(base, 0) + 1
    return base if names[base] == 1 else f"{base}#{names[base]}"


class _Tok:
    """The bundle's tokenizer, called the way validate.held_out_chunks calls a Hugging Face tokenizer."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.t = Tokenizer.from_file(str(path / "tokenizer.json"))

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": self.t.encode(text, add_special_tokens=add_special_tokens).ids}


@dataclass
class Plan:
    """What every bundle is measured on, under which limits: the timed prompt, the fidelity sequences (general-text
    windows; the teacher's answers to the test prompts as ids, from `start`), the graded items, the prompts answered
    for text-level fidelity. Plain JSON (a device kit carries it)."""

    threads: int
    n_ctx: int
    prompt: list[int]
    chunks: list[list[int]]
    domain: list[dict] = field(default_factory=list)  # {id, domain, ids, start}
    items: list[dict] = field(default_factory=list)  # {item: EvalItem as a dict, max_tokens}
    answer_prompts: list[dict] = field(default_factory=list)  # {id, messages, max_tokens}
    new_tokens: int = 64
    repeats: int = 3
    prompt_tokens: int = 128
    memory_budget: int = 0
    min_decode_tokens_per_s: float = 0.0
    timeout_s: float = 3600.0
    poll_s: float = 0.01

    def eval_items(self) -> dict:
        from edgedistill.data.load import EvalItem

        return {i["item"]["id"]: EvalItem(**{**i["item"], "choices": tuple(i["item"]["choices"])}) for i in self.items}


def measure(plan: Plan, info: dict, role: str, work: Path, reference: dict) -> dict:
    """One bundle through its worker processes under the plan's limits: speed (killed over the memory budget; no cap
    for the reference), the format's own bench tool (llama-bench), then quality. reference: how the quality worker
    meets the reference (save_dir [+ top_k, top_k_path] for the reference itself, reference_dir, or
    reference_top_k). Returns the raw results {speed, llama_bench, quality}."""
    is_ref = role == "reference"
    base = {"threads": plan.threads, "n_ctx": plan.n_ctx, "adapter": info.get("adapter")}
    sp = run_worker({**base, "phase": "speed", "bundle": info["bundle"], "prompt_ids": plan.prompt,
                     "new_tokens": plan.new_tokens, "repeats": plan.repeats},
                    work, None if is_ref else plan.memory_budget, plan.timeout_s, plan.poll_s)
    if sp["status"] != "ok":
        return {"speed": sp, "llama_bench": None, "quality": None}
    fast_enough = sp["result"]["decode_tokens_per_s"] >= plan.min_decode_tokens_per_s
    qjob = {**base, "phase": "quality", "bundle": info["bundle"], "general": plan.chunks, "domain": plan.domain,
            "answer_prompts": plan.answer_prompts, **reference,
            "eval_items": plan.items if (is_ref or fast_enough) else []}
    return {"speed": sp, "llama_bench": _native_bench(info, plan),
            "quality": run_worker(qjob, work, None, plan.timeout_s, plan.poll_s)}


def fill(row: Row, raw: dict, plan: Plan, bandwidth: float, ref_row: Row | None, text_ref: dict | None,
         scorer=None) -> Row:
    """The row's status, speed (with the roofline at `bandwidth`), runtime, llama-bench and quality from a bundle's
    raw results (measure)."""
    sp = raw["speed"]
    row.status, row.message = sp["status"], sp["message"]
    if sp["status"] == "ok":
        s = dict(sp["result"])
        s["peak_rss_bytes"] = max(s["peak_rss_bytes"], sp["polled_peak_rss_bytes"])
        s.pop("decode_tokens_per_s_all", None)
        roof = bandwidth / row.model_bytes
        row.speed = {**s, "roofline_tokens_per_s": roof, "roofline_share": s["decode_tokens_per_s"] / roof}
        row.runtime = row.speed.pop("runtime", None)
        lb = raw.get("llama_bench")
        if lb and "note" not in lb:
            pp, tg = lb.get(f"pp{plan.prompt_tokens}_tokens_per_s"), lb.get(f"tg{plan.new_tokens}_tokens_per_s")
            lb = {**lb, "prefill_ratio": s["prefill_tokens_per_s"] / pp if pp else None,  # bench / llama-bench
                  "decode_ratio": s["decode_tokens_per_s"] / tg if tg else None}
        row.llama_bench = lb
    elif sp["status"] == OVER_MEMORY:
        row.speed = {"peak_rss_bytes": sp["polled_peak_rss_bytes"]}
    row.quality = _quality(raw.get("quality"), row, ref_row, plan.domain, plan.eval_items(), bool(plan.items),
                           text_ref, scorer)
    return row


def finish(rows: list[Row], target: Target, out_dir: Path, head: dict, graded_eval: bool) -> dict:
    """Every row's budgets checked, the choice by the profile's objective, the verdict; bench.json, bench.md and the
    charts written to out_dir. head: the report's other fields."""
    for r in rows:
        r.budgets = {} if r.reference else check_budgets(r, target, graded_eval=graded_eval)
    chosen = choose(rows, target.objective)
    report = {"schema_version": SCHEMA_VERSION, "benchmark": "edgedistill bench", **head,
              "target": as_dict(target), "objective": target.objective,
              "variants": [r.as_dict() for r in rows], "chosen": chosen.name if chosen else None}
    report["verdict"] = verdict(report)
    write_report(report, out_dir)
    return report


def bench(bundles: list[Path], target: Target, out_dir: Path, settings: BenchSettings | None = None,
          teacher: Path | None = None, comparison: list[Path] = (), progress=None, scorer=None,
          kit: Path | None = None) -> dict:
    """Measure every bundle under `target`; write bench.json, bench.md and charts to out_dir; return the report.

    teacher: the quality reference (measured without a memory cap), an exact export of the teacher. Its greedy
    answers to the test prompts are the in-domain fidelity set (bench.fidelity). bundles: the candidates, the
    teacher's own quantized files among them where wanted. comparison: bundles measured like the others but
    never chosen; a (base bundle, adapter bundle) pair among them is the base with that LoRA adapter applied (left
    out of a kit). scorer: with --reference-answers of a served teacher, its likelihood of each bundle's answers
    (engines.served.TextScorer). kit: also write a device kit there (bench.kit): the candidates, the plan and the
    reference's top --kit-top-k per position; each candidate's fidelity is also measured against that top-k here
    (quality.top_k), so that this machine's figures and the device's can be set side by side. The settings are
    also written to out_dir/settings.yaml."""
    settings = settings or BenchSettings()
    from edgedistill.bench import fidelity
    from edgedistill.data import default_data_dir
    from edgedistill.data.evaluate import (
        REASONING_TOKENS,
        SHORT_ANSWER_TOKENS,
        find_eval_sets,
        load_eval_items,
        wants_reasoning,
    )
    from edgedistill.export.validate import held_out_chunks
    from edgedistill.paths import check_writable_dir
    from edgedistill.runinfo import run_record

    if not bundles:
        raise EdgeDistillError("no bundles given: pass one or more folders made by `edgedistill export`")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeDistillError(f"--out {out_dir} is a file; give a folder for the report")
    check_writable_dir(out_dir, "--out")  # before a measurement that would be lost at the end
    if teacher and settings.reference_answers:
        raise EdgeDistillError("pass the teacher as --reference (a bundle) or its answers as --reference-answers, "
                               "not both")
    text_ref = _reference_answers(settings.reference_answers) if settings.reference_answers else None
    infos = [_bundle_info(Path(b)) for b in bundles]
    comps = [_bundle_info(b if isinstance(b, tuple) else Path(b)) for b in comparison]
    ref_info = _bundle_info(Path(teacher)) if teacher else None
    every = infos + comps + ([ref_info] if ref_info else [])
    if len({i["tokenizer_sha256"] for i in every}) > 1:
        raise EdgeDistillError("the bundles do not share one tokenizer: bench compares variants of one model with "
                               "its teacher's logits; for a teacher of another tokenizer pass its answers as "
                               "--reference-answers (text-level fidelity)")
    if kit is not None:
        from edgedistill.bench.kit import check_kit_out

        check_kit_out(Path(kit), out_dir, [i["bundle"] for i in infos + comps if not i.get("adapter")],
                      settings.max_kit_size)
    threads = settings.threads or min(target.threads, available_cores())
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
    items, answer_prompts = [], []
    if text_ref is not None:
        answer_prompts = [{"id": i, "messages": r["messages"], "max_tokens": settings.fidelity_new_tokens}
                          for i, r in text_ref["records"].items()]
    if settings.eval_every:
        for it in load_eval_items(find_eval_sets(data_dir))[:: settings.eval_every]:
            if text_ref is not None and it.id not in text_ref["records"]:
                continue  # graded only where the teacher's answer is there to agree with
            answer_prompts = [p for p in answer_prompts if p["id"] != it.id]
            items.append({"item": {**asdict(it), "choices": list(it.choices)},
                          "max_tokens": REASONING_TOKENS if wants_reasoning(it) else SHORT_ANSWER_TOKENS})
    longest = max([len(c) for c in chunks] + [len(d["ids"]) for d in domain])
    plan = Plan(threads=threads, n_ctx=max(settings.prompt_tokens + settings.new_tokens + 8, longest,
                                           min(target.context_length, 2048)),
                prompt=prompt, chunks=[] if text_ref else chunks, domain=domain, items=items,
                answer_prompts=answer_prompts,
                new_tokens=settings.new_tokens, repeats=settings.repeats, prompt_tokens=settings.prompt_tokens,
                memory_budget=target.memory_budget_bytes,
                min_decode_tokens_per_s=target.latency.min_decode_tokens_per_s, timeout_s=settings.timeout_s,
                poll_s=settings.poll_s)
    work = scratch_dir(Path(tempfile.gettempdir()), ".edgedistill-bench-")
    top_k = work / "reference-top-k.npz" if kit is not None and ref_info else None
    names: dict = {}
    order = ([(ref_info, "reference")] if ref_info else []) + [(i, "comparison") for i in comps] + [
        (i, "candidate") for i in infos]
    task = progress.add_task("bench", total=len(order)) if progress else None
    rows: list[Row] = []
    ref_row = None
    try:
        for info, role in order:
            is_ref = role == "reference"
            label = _label(info, names) + ("" if role == "candidate" else f" ({role})")
            if progress:
                progress.update(task, description=f"bench {label}")
            log.info("%s: speed under a %.0f MB budget", label, target.memory_budget_bytes / 1e6)
            row = Row(name=label, **{k: v for k, v in info.items() if k != "tokenizer_sha256"}, reference=is_ref,
                      comparison=role == "comparison", allowed=info["key"] in target.formats,
                      teacher_variant=bool(ref_info) and not is_ref and info["source"] == ref_info["source"])
            if is_ref:
                reference = {"save_dir": str(work / "reference")} | (
                    {"top_k": settings.kit_top_k, "top_k_path": str(top_k)} if top_k else {})
            else:
                reference = ({"reference_dir": str(work / "reference")} if ref_row else {}) | (
                    {"reference_top_k": str(top_k)} if top_k else {})
            fill(row, measure(plan, info, role, work, reference), plan, bandwidth, ref_row, text_ref, scorer)
            if is_ref:
                ref_row = row
            rows.append(row)
            if progress:
                progress.advance(task)
        graded = bool(items) and (ref_row is not None or text_ref is not None)
        head = {**run_record(), "threads": threads, "machine_cores": os.cpu_count(),
                "bandwidth_bytes_per_s": bandwidth, "bandwidth_source": bandwidth_source,
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
                "quality_reference": ref_row.name if ref_row else (
                    f"{text_ref['teacher']}'s answers (text)" if text_ref else None),
                "fidelity": {"in_domain_prompts": len(domain) or len(answer_prompts),
                             "level": "text (chrF, answer agreement)" if text_ref else "tokens (KL, top-1)",
                             "in_domain_answer_tokens": sum(len(d["ids"]) - d["start"] for d in domain),
                             "general_windows": len(chunks), "general_tokens": sum(len(c) for c in chunks),
                             "interval": "95% percentile bootstrap over prompts / windows / items (2,000 resamples)"}
                | ({"kit_reference_form": f"the reference's top {settings.kit_top_k} per position and the rest of "
                                          "its mass (k + 1 bins; KL a lower bound of the full one), as the device "
                                          "kit carries it: each variant's quality.top_k here, its quality on the "
                                          "device"} if top_k else {}),
                "eval_items": len(items),
                "budgets_left_out": [] if graded else [
                    "answer_agreement (needs --reference or --reference-answers, and a graded eval)"]}
        report = finish(rows, target, out_dir, head, graded)
        write_settings(settings, Path(out_dir) / "settings.yaml")
        if kit is not None:
            from edgedistill.bench.kit import write_kit

            write_kit(Path(kit), report, plan, rows, target, top_k, text_ref, settings)
    finally:
        remove_scratch(work)
    return report


def _native_bench(info: dict, plan: Plan) -> dict | None:
    """The runtime's own benchmark tool (GGUF: llama.cpp's llama-bench) on the same file, prompt length, token count
    and threads, beside the bench's own figures (their ratios close to 1 say the bench's timing means what the
    runtime's users quote; fill() adds them); None for a format without one. Left out, and said so, where the tool
    is not built (a device with the runtime extra only)."""
    from edgedistill.quantize import format_of
    from edgedistill.runtime.bundle import open_bundle

    if info.get("adapter"):
        return {"note": "not measured: llama-bench applies no LoRA adapter"}
    model = Path(info["bundle"]) / open_bundle(info["bundle"], verify=False)["model_file"]
    try:
        return format_of(info["format"]).native_bench(model, prompt_tokens=plan.prompt_tokens,
                                                      new_tokens=plan.new_tokens, threads=plan.threads,
                                                      repeats=plan.repeats)
    except EdgeDistillError as e:
        return {"note": f"not measured: {e}"}


def _reference_answers(paths: list[Path]) -> dict:
    """The teacher's answers (records `generate` wrote) as {teacher, records: id -> record}; one teacher only."""
    from edgedistill.distill.dataset import load_generations

    records = load_generations(paths, allow_empty=True)
    teachers = {(r.get("teacher"), r.get("teacher_fingerprint")) for r in records}
    if len(teachers) > 1:
        raise EdgeDistillError(f"--reference-answers hold several teachers' answers ({sorted(map(str, teachers))}): "
                               "pass one teacher's")
    teacher = teachers.pop()
    return {"teacher": teacher[0], "fingerprint": teacher[1], "records": {r["id"]: r for r in records}}


def _quality(qu: dict | None, row: Row, ref_row: Row | None, domain: list[dict], eval_items: dict,
             graded: bool, text_ref: dict | None = None, scorer=None) -> dict | None:
    """In-domain and general-text fidelity to the reference, with intervals; graded score and answer agreement.
    Against a teacher's text answers (text_ref): chrF of the greedy answers and answer agreement on graded items."""
    from edgedistill.bench import fidelity
    from edgedistill.data import grading

    if qu is None or qu["status"] != "ok":
        return None
    res = qu["result"]
    out: dict = {}
    if text_ref is not None:
        from edgedistill.data.text_fidelity import compare

        out["against"] = "teacher answers"
        refs = {i: r["response"] for i, r in text_ref["records"].items() if i in (res.get("answers") or {})}
        if refs:
            nll = scorer([(i, text_ref["records"][i]["messages"], res["answers"][i]) for i in refs]) if scorer else None
            out["text"] = compare(refs, res["answers"], nll=nll)
    elif row.reference or ref_row is not None:
        out["against"] = "itself" if row.reference else "reference"
        if res["domain"]:
            out["in_domain"] = fidelity.by_domain(res["domain"], [d["domain"] for d in domain])
        out["general"] = fidelity.summarize(res["general"])
        if res.get("top_k"):  # the device kit's measure, on this machine (bench --kit)
            out["top_k"] = {"general": fidelity.summarize(res["top_k"]["general"])}
            if res["top_k"]["domain"]:
                out["top_k"]["in_domain"] = fidelity.by_domain(res["top_k"]["domain"], [d["domain"] for d in domain])
    else:  # no teacher given: the export-time metrics, against the bundle's own source
        from edgedistill.runtime.bundle import open_bundle

        v = open_bundle(row.bundle, verify=False).get("validation") or {}
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
        if row.reference:
            row.answers = {a["id"]: a["answer"] for a in res["eval"]}
        elif text_ref is not None:
            ref = {i: grading.predicted(eval_items[i], r["response"]) for i, r in text_ref["records"].items()
                   if i in eval_items}
            g["answer_agreement"] = fidelity.share([grading.same_answer(it, a["answer"], ref.get(a["id"]))
                                                    for it, a in zip(items, res["eval"]) if a["id"] in ref])
        elif ref_row is not None and ref_row.answers:
            ref = ref_row.answers
            g["answer_agreement"] = fidelity.share([grading.same_answer(it, a["answer"], ref.get(a["id"]))
                                                    for it, a in zip(items, res["eval"]) if a["id"] in ref])
        out["graded"] = g
    elif graded:
        out["graded_note"] = "graded items skipped: below the profile's decode speed"
    return out
