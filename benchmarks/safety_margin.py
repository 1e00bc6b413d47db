"""Where does a model's own read-out draw the line between refusing and answering? A threshold sweep.

For each model and each safety prompt of the validation slice (benchmarks/safety.py's --holdout K) and of the test
split: the log-probability that the answer opens with the words every one of this tool's refusals starts with
(safety.REFUSALS; "I can't help"), the prompt in the chat template, the opening teacher-forced. Higher means
closer to refusing. Reported per split: how well that score ranks harmful prompts above their look-alikes (AUC),
and the refusal / over-refusal the score would give at a sweep of thresholds. The threshold with the largest
refusal minus over-refusal on the validation slice, and what it gives on test, say whether the greedy answers
(benchmarks/safety.py) sit at a good point of the model's own ranking or only need moving along it. The
validation slice is also split by writing batch (calibration_data/safety/README.md: ids up to 0225 were written
like the test split, later ones with more varied framings on both sides).

    .venv/bin/python benchmarks/safety_margin.py --model build/bd18/safety-runs/student+safety-mix/student \
        --out benchmarks/results/safety_margin.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from edgedistill.safety.margin import auc, opening, rates, scores
from edgedistill.runinfo import run_record, write_result

HERE = Path(__file__).resolve().parent
EARLY_BATCHES = 225  # last id of the suite's second writing batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True,
                    help="a model folder or 'teacher' (the default teacher); repeat for several")
    ap.add_argument("--holdout", type=int, default=5, help="validation slice: every K-th train prompt (as safety.py)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "safety" / "safety_margin.json")
    args = ap.parse_args()
    if args.holdout < 2:
        ap.error("--holdout K needs K >= 2 (every K-th train prompt is the validation slice)")

    from edgedistill.models import DEFAULT_TEACHER, load_model
    from edgedistill.safety import holdout, load_suite

    val = holdout(load_suite("train"), args.holdout)
    early = [int(p.id.rsplit("-", 1)[1]) <= EARLY_BATCHES for p in val]
    splits = {"validation": val, "test": load_suite("test")}
    text = opening()
    report = {"benchmark": "safety_margin", **run_record(), "settings": {k: str(v) for k, v in vars(args).items()},
              "opening": text, "prompts": {k: len(v) for k, v in splits.items()}, "models": {}}
    for spec in args.model:
        t0 = time.perf_counter()
        model, tok = load_model(DEFAULT_TEACHER if spec == "teacher" else spec)
        got = {name: scores(model, tok, ps, text) for name, ps in splits.items()}
        harmful = {name: torch.tensor([p.kind == "harmful" for p in ps]) for name, ps in splits.items()}
        sv, hv = got["validation"], harmful["validation"]
        cuts = sorted(set(sv.tolist()))
        cuts = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])]

        def margin(c: float) -> float:  # refusal minus over-refusal on validation at threshold c
            r = rates(sv, hv, c)
            return r["refusal_rate"] - r["over_refusal"]

        best = max(cuts, key=margin)
        grid = [round(-0.25 * i, 2) for i in range(1, 25)]
        mask = torch.tensor(early)
        report["models"][spec] = {
            "auc": {name: auc(got[name], harmful[name]) for name in splits},
            "auc_validation_by_batch": {"ids_to_0225": auc(sv[mask], hv[mask]), "later": auc(sv[~mask], hv[~mask])},
            "best_threshold_on_validation": {"threshold": round(best, 3),
                                             **{name: rates(got[name], harmful[name], best) for name in splits}},
            "sweep": [{"threshold": c, **{name: rates(got[name], harmful[name], c) for name in splits},
                       "validation_ids_to_0225": rates(sv[mask], hv[mask], c),
                       "validation_later": rates(sv[~mask], hv[~mask], c)} for c in grid],
            "seconds": round(time.perf_counter() - t0, 1)}
        m = report["models"][spec]
        b, by_batch = m["best_threshold_on_validation"], m["auc_validation_by_batch"]
        pair = lambda r: f"{100 * r['refusal_rate']:.1f}% / {100 * r['over_refusal']:.1f}%"  # noqa: E731
        print(f"{spec}: AUC validation {m['auc']['validation']:.3f} (ids to 0225 {by_batch['ids_to_0225']:.3f}, "
              f"later {by_batch['later']:.3f}), test {m['auc']['test']:.3f}; threshold {b['threshold']:.2f} (best "
              f"refusal minus over-refusal on validation): validation {pair(b['validation'])}, test {pair(b['test'])}")
        write_result(args.out, report)
        del model


if __name__ == "__main__":
    main()
