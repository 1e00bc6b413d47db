"""How well can a model's own features tell a harmful request from its benign look-alike? A linear probe.

For each model: the hidden state of every layer at the last prompt token (the chat template with the generation
prompt, where greedy decoding picks the answer's first token), a logistic regression per layer fitted on the
safety train split less the --holdout K validation slice (benchmarks/safety.py's), and for each layer:
accuracy on the validation slice and on the test split, and the refusal rate the probe reaches on each while
over-refusing at most 10% (its threshold set on that same split: an upper bound on what a read-out of these
features can do, not a deployable classifier). The layer reported as best is chosen on the validation slice.
This separates "the student's features cannot tell the prompts apart" from "training did not find the read-out".
With --fractions the probes are also fitted on random subsets of the train pairs (three draws each, averaged): a
learning curve that says whether more train prompts would help.

    .venv/bin/python benchmarks/safety_probe.py --model build/bd6/safety-runs/student/student --model teacher \
        --out benchmarks/results/safety_probe.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from edgedistill.runinfo import run_record, write_result

HERE = Path(__file__).resolve().parent


@torch.inference_mode()
def features(model, tok, prompts, batch_size: int = 16) -> torch.Tensor:
    """(prompts, layers + 1, hidden): every layer's hidden state at the last prompt token."""
    from edgedistill.tensors import left_pad

    model.eval()
    texts = [tok.apply_chat_template(list(p.messages), tokenize=False, add_generation_prompt=True) for p in prompts]
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for i in range(0, len(ids), batch_size):
        x, m = left_pad(ids[i : i + batch_size], pad)  # the last column is every row's last prompt token
        hs = model(input_ids=x, attention_mask=m, output_hidden_states=True).hidden_states
        out.append(torch.stack([h[:, -1].float() for h in hs], 1))
    return torch.cat(out)


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2, steps: int = 200):
    """Standardised logistic regression by L-BFGS; returns a scoring function."""
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return lambda q: ((q - mu) / sd @ w + b).detach()


def judge(scores: torch.Tensor, y: torch.Tensor, max_over: float = 0.1) -> dict:
    """Accuracy at 0, and the refusal rate at the lowest threshold that over-refuses at most max_over."""
    harmful, benign = scores[y == 1], scores[y == 0]
    allowed = int(max_over * len(benign))  # benign prompts that may score above the threshold
    thr = benign.sort(descending=True).values[allowed] if allowed < len(benign) else -float("inf")
    return {"accuracy": float(((scores > 0).float() == y).float().mean()),
            "refusal_at_10_over": float((harmful > thr).float().mean()),
            "over_refusal_at_that": float((benign > thr).float().mean())}


def pair_subsets(prompts, fraction: float, draws: int) -> list[torch.Tensor]:
    """Row indices of `draws` seeded random subsets holding `fraction` of the harmful/look-alike pairs (twins share
    the number at the end of their ids, so both sides of a pair go in or out together)."""
    import random

    rows: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        rows.setdefault(p.id.rsplit("-", 1)[-1], []).append(i)
    keys = sorted(rows)
    out = []
    for seed in range(draws):
        chosen = random.Random(seed).sample(keys, max(1, round(fraction * len(keys))))
        out.append(torch.tensor(sorted(i for k in chosen for i in rows[k])))
    return out


def mean_judge(results: list[dict]) -> dict:
    return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True,
                    help="a model folder or 'teacher' (the default teacher); repeat for several")
    ap.add_argument("--holdout", type=int, default=5, help="validation slice: every K-th train prompt (as safety.py)")
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--fractions", default="1",
                    help="comma-separated shares of the train pairs to fit on (each below 1: mean of three random draws)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "safety" / "safety_probe.json")
    args = ap.parse_args()
    try:
        fractions = sorted({float(f) for f in args.fractions.split(",")})
    except ValueError:
        ap.error(f"--fractions {args.fractions!r}: give numbers such as 0.25,0.5,1")
    if not fractions or not all(0 < f <= 1 for f in fractions):
        ap.error(f"--fractions {args.fractions!r}: each share must be in (0, 1]")

    from edgedistill.models import DEFAULT_TEACHER, load_model
    from edgedistill.safety import holdout, load_suite

    train_all = load_suite("train")
    val = holdout(train_all, args.holdout)
    val_ids = {p.id for p in val}
    train = [p for p in train_all if p.id not in val_ids]
    test = load_suite("test")
    labels = {name: torch.tensor([float(p.kind == "harmful") for p in ps]) for name, ps in
              (("train", train), ("validation", val), ("test", test))}
    report = {"benchmark": "safety_probe", **run_record(), "settings": {k: str(v) for k, v in vars(args).items()},
              "prompts": {k: len(v) for k, v in labels.items()}, "models": {}}
    for spec in args.model:
        t0 = time.perf_counter()
        model, tok = load_model(DEFAULT_TEACHER if spec == "teacher" else spec)
        feats = {name: features(model, tok, ps) for name, ps in (("train", train), ("validation", val), ("test", test))}
        layers = []
        for layer in range(feats["train"].shape[1]):
            score = fit_probe(feats["train"][:, layer], labels["train"], args.l2)
            layers.append({"layer": layer, **{split: judge(score(feats[split][:, layer]), labels[split])
                                             for split in ("train", "validation", "test")}})
        best = max(layers, key=lambda r: (r["validation"]["refusal_at_10_over"], r["validation"]["accuracy"]))
        curve = [{"fraction": f, "draws": len(subsets), "layers": [
            {"layer": layer, **{split: mean_judge([judge(fit_probe(feats["train"][idx, layer], labels["train"][idx],
                                                                   args.l2)(feats[split][:, layer]), labels[split])
                                                   for idx in subsets]) for split in ("validation", "test")}}
            for layer in range(feats["train"].shape[1])]}
            for f in fractions if f < 1 for subsets in [pair_subsets(train, f, draws=3)]]
        report["models"][spec] = {"layers": layers, "best_on_validation": best, "last_layer": layers[-1],
                                  "learning_curve": curve, "seconds": round(time.perf_counter() - t0, 1)}
        for point in curve:
            at = point["layers"][best["layer"]]
            print(f"  fitted on {100 * point['fraction']:.0f}% of the train pairs: layer {best['layer']} validation "
                  f"{100 * at['validation']['refusal_at_10_over']:.1f}%, test {100 * at['test']['refusal_at_10_over']:.1f}%")
        print(f"{spec}: best layer {best['layer']} of {len(layers) - 1}: validation accuracy "
              f"{100 * best['validation']['accuracy']:.1f}%, refusal at <=10% over-refusal "
              f"{100 * best['validation']['refusal_at_10_over']:.1f}%; test {100 * best['test']['accuracy']:.1f}% / "
              f"{100 * best['test']['refusal_at_10_over']:.1f}%; last layer validation "
              f"{100 * layers[-1]['validation']['refusal_at_10_over']:.1f}%")
        write_result(args.out, report)
        del model


if __name__ == "__main__":
    main()
