"""Likelihood scoring of eval items that list their choices."""

from __future__ import annotations

import torch

from edgedistill.data.evaluate import choice_accuracy
from edgedistill.data.load import EvalItem
from edgedistill.models import load_model


def test_choice_is_the_most_likely_continuation(tiny_model_dir):
    model, tok = pair = load_model(str(tiny_model_dir))
    items = [EvalItem("a", "classification", "Fault type of 'coil open circuit'?", "electrical",
                      ("electrical", "mechanical", "hydraulic"), "factory"),
             EvalItem("b", "yes_no", "Is M-3 down? Think step by step, then 'Answer: <x>'.", "yes", ("yes", "no"),
                      "factory"),
             EvalItem("c", "extraction", "Which machine?", "M-3", (), "factory")]
    r = choice_accuracy("tiny", items, loaded=pair)
    assert [x["id"] for x in r.items] == ["a", "b"]  # no choices: not scored this way
    for it, row in zip(items, r.items):
        # the score of each choice, recomputed one sequence at a time with no padding
        context = tok.apply_chat_template([{"role": "user", "content": it.prompt}], add_generation_prompt=True,
                                          tokenize=False)
        lead = ""
        if it.id == "b":
            context, lead = context + "Answer:", " "
        c_ids = tok(context, add_special_tokens=False).input_ids
        for choice in it.choices:
            cont = tok(lead + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([c_ids + cont])).logits.float(), -1)[0]
            want = sum(float(logp[len(c_ids) - 1 + i, t]) for i, t in enumerate(cont))
            assert abs(row["scores"][choice] - want) < 1e-3
        assert row["predicted"] == max(row["scores"], key=row["scores"].get)
        assert row["correct"] == (row["predicted"] == it.answer) and row["chance"] == 1 / len(it.choices)
    assert r.overall() == sum(x["correct"] for x in r.items) / 2
