"""The profile's budgets and floors per variant (with margins and intervals), the choice by objective, the Pareto
front and the verdict lines."""

from __future__ import annotations

from edgedistill.bench.rows import Check, Row
from edgedistill.targets import Target


def _check(value, limit, higher_is_better: bool, missing: str = "not measured", ci=None) -> Check:
    """One budget: pass / fail, or "uncertain" when the value's 95% interval straddles the limit (not passed)."""
    if value is None:
        return Check(None, limit, "fail", note=missing)
    ok = value >= limit if higher_is_better else value <= limit
    status = "pass" if ok else "fail"
    # uncertain: the interval reaches past the limit on the wrong side (a floor of 0 cannot be missed)
    if ci is not None and ci[0] < ci[1] and (ci[0] < limit <= ci[1] if higher_is_better else ci[0] <= limit < ci[1]):
        status = "uncertain"
    margin = (value - limit) if higher_is_better else (limit - value)
    return Check(value, limit, status, margin, margin / limit if limit else None,
                 ci=list(ci) if ci is not None else None)


def check_budgets(row: Row, target: Target, graded_eval: bool = True) -> dict[str, Check]:
    """Every budget and floor of the profile for one row, with the margin (positive: inside) and, for quality,
    the interval. Quality counts only against the teacher: export-time numbers against a bundle's own source do
    not. Without a graded eval (graded_eval False) the answer-agreement floor is left out, not passed."""
    q, lat = target.quality_floor, target.latency
    sp, qu = row.speed or {}, row.quality or {}
    vs_teacher = qu.get("against") in ("reference", "teacher answers")
    text = qu.get("against") == "teacher answers"  # another tokenizer or a served teacher: no logits to compare
    missing = "not measured" if not qu or vs_teacher else "not measured against the teacher (pass --reference)"
    dom = ((qu.get("in_domain") or {}).get("overall") or {}) if vs_teacher else {}
    gen = (qu.get("general") or {}) if vs_teacher else {}
    agree = ((qu.get("graded") or {}).get("answer_agreement") or {}) if vs_teacher else {}

    def fid(block: dict, key: str, limit, higher: bool, why: str = missing) -> dict:
        return _check(block.get(key), limit, higher, why, block.get(f"{key}_ci"))

    checks = {
        "memory": _check(sp.get("peak_rss_bytes"), target.memory_budget_bytes, False),
        "time_to_first_token": _check(sp.get("ttft_s"), lat.time_to_first_token_s, False),
        "decode_tokens_per_s": _check(sp.get("decode_tokens_per_s"), lat.min_decode_tokens_per_s, True),
    }
    if text:  # token-level floors are undefined across tokenizers; the profile's text floors stand in
        chrf = (qu.get("text") or {}).get("chrf") or {}
        if q.min_chrf is not None:
            checks["chrf"] = _check(chrf.get("value"), q.min_chrf, True, missing, chrf.get("ci"))
    else:
        checks["in_domain_mean_kl"] = fid(dom, "mean_kl", q.max_mean_kl, False)
        checks["in_domain_top1"] = fid(dom, "top1_agreement", q.min_top1_agreement, True)
    if graded_eval:
        checks["answer_agreement"] = _check(agree.get("value"), q.min_answer_agreement, True,
                                            qu.get("graded_note") or missing, agree.get("ci"))
    if q.general_max_mean_kl is not None and not text:
        checks["general_mean_kl"] = fid(gen, "mean_kl", q.general_max_mean_kl, False)
    if q.general_min_top1_agreement is not None and not text:
        checks["general_top1"] = fid(gen, "top1_agreement", q.general_min_top1_agreement, True)
    return checks


def choose(rows: list[Row], objective: str = "fastest") -> Row | None:
    """The candidate (allowed, neither the reference nor a comparison) the profile's objective ranks first among
    those that pass every budget and floor (an "uncertain" floor is not passed); None when none does."""
    from edgedistill.targets.objectives import OBJECTIVES

    ok = [r for r in rows if r.candidate and r.meets_all_budgets]
    return max(ok, key=OBJECTIVES[objective].key) if ok else None


def pareto(points: list[tuple[str, float, float]]) -> set[str]:
    """Names of the points not dominated when both coordinates are to be maximised."""
    front = set()
    for name, x, y in points:
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for _, x2, y2 in points):
            front.add(name)
    return front


def verdict(report: dict) -> list[str]:
    """Two or three plain lines: what was chosen and why, whether quantizing the teacher is enough for the
    device or only a student fits, and what the nearest miss lacks."""
    rows = [r for r in map(Row.from_dict, report["variants"]) if r.candidate]
    t = report["target"]["name"]
    obj = report["objective"]
    chosen = next((r for r in rows if r.name == report["chosen"]), None)
    passing = [r for r in rows if r.meets_all_budgets]
    teacher_ok = [r for r in passing if r.teacher_variant]
    student_ok = [r for r in passing if not r.teacher_variant]
    lines = []
    if chosen:
        sp = chosen.decode_tokens_per_s
        lines.append(f"{t}: chosen {chosen.name} ({obj}: {sp:.0f} decode tokens/s, "
                     f"{chosen.speed['peak_rss_bytes'] / 1e6:.0f} MB) — it meets every budget and floor.")
        if chosen.teacher_variant:
            students = [r for r in rows if not r.teacher_variant]
            lines.append(f"Quantizing the teacher is enough for {t}" + (
                "; no student was benched" if not students else
                "; no student variant meets every budget and floor" if not student_ok else
                f"; {len(student_ok)} student variant(s) also meet it but rank lower on {obj}") + ".")
        elif teacher_ok:
            best = max(teacher_ok, key=lambda r: r.decode_tokens_per_s)
            lines.append(f"The student is worth it on {obj}: {sp / best.decode_tokens_per_s:.2f}x the "
                         f"decode speed of the best teacher variant that also qualifies ({best.name}).")
        else:
            lines.append(f"Only a student fits {t}: no quantized teacher variant meets every budget.")
    else:
        lines.append(f"{t}: no variant meets every budget and floor; nothing is chosen.")
    misses = [r for r in rows if r is not chosen and not r.meets_all_budgets and r.budgets]
    if misses:
        near = min(misses, key=lambda r: (sum(not c.passed for c in r.budgets.values()), -r.decode_tokens_per_s))
        parts = []
        for k, c in near.budgets.items():
            if c.passed:
                continue
            if c.value is None:
                parts.append(f"{k} {c.note}")
                continue
            ci = f" [{c.ci[0]:.3g}, {c.ci[1]:.3g}]" if c.ci else ""
            parts.append(f"{k} {c.value:.3g}{ci} vs {c.limit:.3g}" + (" (uncertain)" if c.status == "uncertain" else ""))
        lines.append(f"Nearest miss: {near.name}: " + "; ".join(parts) + ".")
    return lines
