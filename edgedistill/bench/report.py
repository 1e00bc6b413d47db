"""bench.json, bench.md and the charts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgedistill.bench.budgets import pareto
from edgedistill.bench.rows import Row
from edgedistill.paths import write_texts_atomic

log = logging.getLogger(__name__)


def write_report(report: dict, out_dir: Path) -> None:
    """bench.json, bench.md and (with matplotlib) two charts, written to a temp folder and moved into place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_texts_atomic({out_dir / "bench.json": json.dumps(report, indent=2, default=str) + "\n",
                        out_dir / "bench.md": markdown(report)})
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
    rows = [Row.from_dict(r) for r in report["variants"]]
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
    for r in rows:
        s = r.speed or {}
        lines.append(
            f"| {r.name} | {r.status} | {r.model_bytes / 1e6:.1f} | {_fmt(s.get('peak_rss_bytes'), '.0f', 1e-6)} | "
            f"{_fmt(s.get('load_s'), '.2f')} | {_fmt(s.get('ttft_s'), '.0f', 1000)} | "
            f"{_fmt(s.get('prefill_tokens_per_s'), '.0f')} | {_fmt(s.get('decode_tokens_per_s'), '.1f')} | "
            f"{_fmt(s.get('token_latency_p50_s'), '.1f', 1000)} / {_fmt(s.get('token_latency_p95_s'), '.1f', 1000)} | "
            f"{_fmt(s.get('roofline_share'), '.0%')} | {_llama_bench_cell(r, report)} |")
    adapters = [r for r in rows if r.adapter]
    if adapters:
        lines += ["", "A base file with a LoRA adapter applied at load time (one base on the device, one small file "
                      "per task); its file MB is both:", ""]
        lines += [f"- {r.name}: the base {(r.model_bytes - r.adapter_bytes) / 1e6:.1f} MB, the adapter "
                  f"{r.adapter_bytes / 1e6:.1f} MB ({r.adapter})" for r in adapters]
    runtimes = {}
    for r in rows:
        info = r.runtime or {}
        line = info.get("system_info") or (f"providers {', '.join(info['providers'])}" if info.get("providers") else "")
        if line:
            runtimes.setdefault(f"{info['runtime']}: {line}", None)
    if runtimes:
        lines += ["", "What the runtimes use on this CPU:", ""] + [f"- {x}" for x in runtimes]
    text = f.get("level", "").startswith("text")  # against a teacher's text answers: no logits to compare
    lines += ["", "| variant | chrF to the teacher | answers agree % | teacher NLL/byte | graded % (chance) | verdict |",
              "|---|---|---|---|---|---|"] if text else [
        "", "| variant | in-domain KL | in-domain top-1 % | answers agree % | graded % (chance) | general KL | "
            "general top-1 % | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r.quality or {}
        dom, gen, g = (q.get("in_domain") or {}).get("overall"), q.get("general"), q.get("graded") or {}
        failed = [k for k, c in r.budgets.items() if c.status == "fail"]
        unsure = r.uncertain
        verdict = ("reference" if r.reference else "not in profile" if not r.allowed
                   else "all met" if not failed and not unsure else
                   "; ".join(x for x in ("misses " + ", ".join(failed) if failed else "",
                                         "uncertain " + ", ".join(unsure) if unsure else "") if x))
        if r.comparison:
            verdict = "comparison (not a candidate): " + verdict
        if r.name == report["chosen"]:
            verdict = "**chosen** — " + verdict
        graded = (f"{_ci(g.get('score'), 'value', '.1f', 100)} ({100 * g['chance']:.0f})" if g.get("score") else "—")
        if text:
            tq = q.get("text") or {}
            lines.append(f"| {r.name} | {_ci(tq.get('chrf'), 'value', '.1f')} | "
                         f"{_ci(g.get('answer_agreement'), 'value', '.1f', 100)} | "
                         f"{_ci(tq.get('teacher_nll_per_byte'), 'value', '.3f')} | {graded} | {verdict} |")
            continue
        lines.append(f"| {r.name} | {_ci(dom, 'mean_kl', '.3f')} | {_ci(dom, 'top1_agreement', '.1f', 100)} | "
                     f"{_ci(g.get('answer_agreement'), 'value', '.1f', 100)} | {graded} | "
                     f"{_ci(gen, 'mean_kl', '.3f')} | "
                     f"{_ci(gen, 'top1_agreement', '.1f', 100)} | {verdict} |")
    lines += _side_by_side(report, rows, text)
    lines += ["", "Budgets (margin: how far inside the budget; negative: missed by that much; uncertain: the 95% "
                  "interval straddles the floor, so it is not passed):", ""]
    for r in rows:
        if not r.budgets:
            continue
        parts = []
        for k, c in r.budgets.items():
            if c.value is None:
                parts.append(f"{k} {c.note}")
            else:
                word = {"pass": "ok", "fail": "FAIL", "uncertain": "UNCERTAIN"}[c.status]
                parts.append(f"{k} {word} ({_fmt(c.margin_share, '+.0%')})")
        lines.append(f"- {r.name}: " + "; ".join(parts) + (f" — {r.message}" if r.message else ""))
    lines += ["", f"Chosen: {report['chosen'] or 'none'}", ""] + [f"> {x}" for x in report.get("verdict", [])] + [""]
    return "\n".join(lines)


def _side_by_side(report: dict, rows: list[Row], text: bool) -> list[str]:
    """A merged device report: where each row's figures came from, and the build machine's beside the device's."""
    if not report.get("build_machine"):
        return []
    b, kit = report["build_machine"], report.get("kit") or {}
    same = "" if text else f" (fidelity on both against the reference's top-{kit.get('top_k')} kept in the kit)"
    lines = ["", f"Device figures merged from kit {str(kit.get('id', ''))[:12]} (made {kit.get('made')}): this "
                 f"report's figures are the device's ({report['machine']['cpu']}, {report['threads']} threads) where "
                 f"it measured a variant, else the build machine's ({b['cpu']}, {report['build_threads']} threads); "
                 f"the choice uses them. Build machine -> device{same}:", "",
             "| variant | figures from | decode tok/s | TTFT ms | peak RSS MB | "
             + ("chrF | answers agree %" if text else "in-domain KL | in-domain top-1 %") + " |",
             "|---|---|---|---|---|---|---|"]

    def pair(old, new, spec, scale=1.0):
        return f"{_fmt(old, spec, scale)} -> {_fmt(new, spec, scale)}"

    for r in rows:
        if r.reference:
            continue
        was = r.build or {}
        s0, s1 = was.get("speed") or {}, r.speed or {}
        q0, q1 = was.get("quality") or {}, r.quality or {}
        if text:
            f0, f1 = (q0.get("text") or {}).get("chrf") or {}, (q1.get("text") or {}).get("chrf") or {}
            g0 = ((q0.get("graded") or {}).get("answer_agreement") or {}).get("value")
            g1 = ((q1.get("graded") or {}).get("answer_agreement") or {}).get("value")
            fid = f"{pair(f0.get('value'), f1.get('value'), '.1f')} | {pair(g0, g1, '.1f', 100)}"
        else:
            d0 = ((q0.get("top_k") or q0).get("in_domain") or {}).get("overall") or {}  # the device's measure
            d1 = (q1.get("in_domain") or {}).get("overall") or {}
            fid = (f"{pair(d0.get('mean_kl'), d1.get('mean_kl'), '.3f')} | "
                   f"{pair(d0.get('top1_agreement'), d1.get('top1_agreement'), '.1f', 100)}")
        if r.measured_on != "device":
            lines.append(f"| {r.name} | build machine (not measured on the device) | "
                         f"{_fmt(s1.get('decode_tokens_per_s'), '.1f')} | | | |")
            continue
        lines.append(f"| {r.name} | device | {pair(s0.get('decode_tokens_per_s'), s1.get('decode_tokens_per_s'), '.1f')} | "
                     f"{pair(s0.get('ttft_s'), s1.get('ttft_s'), '.0f', 1000)} | "
                     f"{pair(s0.get('peak_rss_bytes'), s1.get('peak_rss_bytes'), '.0f', 1e-6)} | {fid} |")
    return lines


def _llama_bench_cell(r: Row, report: dict) -> str:
    lb = r.llama_bench
    if not lb:
        return "—"
    st = report["settings"]
    pp, tg = lb.get(f"pp{st['prompt_tokens']}_tokens_per_s"), lb.get(f"tg{st['new_tokens']}_tokens_per_s")
    if pp is None and tg is None:
        return "no LoRA in llama-bench" if r.adapter else "not built"
    return f"{_fmt(pp, '.0f')} / {_fmt(tg, '.1f')}"


def _fidelity_point(r: Row) -> tuple[float, list[float] | None] | None:
    """The chart's y: in-domain top-1 with its interval, else general text's."""
    q = r.quality or {}
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
    pts = [r for r in map(Row.from_dict, report["variants"]) if r.decode_tokens_per_s and _fidelity_point(r)]
    written = []
    specs = [("quality_vs_speed.png", "decode tokens/s", lambda r: r.decode_tokens_per_s, 1,
              t["latency"]["min_decode_tokens_per_s"]),
             ("quality_vs_memory.png", "peak RSS (MB)", lambda r: r.speed["peak_rss_bytes"] / 1e6, -1,
              t["memory_budget_bytes"] / 1e6)]
    for fname, xlabel, xof, sign, budget in specs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        front = pareto([(r.name, sign * xof(r), _fidelity_point(r)[0]) for r in pts])
        for r in pts:
            on = r.name in front
            y, ci = _fidelity_point(r)
            if ci:
                ax.errorbar(xof(r), 100 * y, yerr=[[100 * (y - ci[0])], [100 * (ci[1] - y)]], fmt="none",
                            ecolor="tab:gray", elinewidth=1, capsize=2, zorder=2)
            ax.scatter(xof(r), 100 * y, s=60 if on else 30, marker="*" if r.name == report["chosen"] else "o",
                       color="tab:red" if on else "tab:gray", zorder=3)
            ax.annotate(r.name, (xof(r), 100 * y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        line = sorted((xof(r), 100 * _fidelity_point(r)[0]) for r in pts if r.name in front)
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
