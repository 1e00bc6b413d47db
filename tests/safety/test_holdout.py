"""safety.holdout (benchmarks/safety.py --holdout): the validation slice of the train split used to choose safety
settings."""

from __future__ import annotations

from collections import Counter

from edgedistill.safety import holdout, load_suite


def test_holdout_takes_every_kth_prompt_of_each_kind_and_category():
    train = load_suite("train")
    held = holdout(train, 5)
    groups = Counter((p.kind, p.category) for p in train)
    assert Counter((p.kind, p.category) for p in held) == {g: n // 5 for g, n in groups.items()}
    assert len({p.id for p in held}) == len(held)


def test_holdout_keeps_look_alike_pairs_together():
    # A benign look-alike shares its words with its harmful twin (same number): training on one half of a pair and
    # validating on the other would leak, so both halves must land on the same side.
    held = {p.id for p in holdout(load_suite("train"), 5)}
    numbers = lambda kind: {i.rsplit("-", 1)[1] for i in held if i.startswith(f"safety-{kind[0]}-")}
    assert numbers("harmful") == numbers("benign")
