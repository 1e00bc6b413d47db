"""The shipped calibration_data/ asset: sizes the project promises, valid records, and clean splits."""

import pytest

from edgedistill.data import SPLITS, default_data_dir, load_eval, load_prompts, load_texts
from edgedistill.data.stats import cross_split_leaks, domains

DATA = default_data_dir()
DOMAINS = ("factory", "productivity", "support")
TASKS = {"classification", "extraction", "yes_no", "multiple_choice", "arithmetic"}


def test_the_three_domains_are_there():
    assert tuple(d.name for d in domains(DATA)) == DOMAINS


@pytest.mark.parametrize("domain", DOMAINS)
def test_prompts(domain):
    sets = {s: load_prompts(DATA / domain / "prompts" / f"{s}.jsonl")[0] for s in SPLITS}
    total = sum(len(v) for v in sets.values())
    assert total >= 300
    assert all(len(sets[s]) >= 0.05 * total for s in SPLITS)
    ids = [p.id for v in sets.values() for p in v]
    assert len(ids) == len(set(ids))
    reasoning = sum(p.reasoning for v in sets.values() for p in v)
    assert reasoning >= 0.2 * total  # step-by-step prompts are part of what the student learns


@pytest.mark.parametrize("domain", DOMAINS)
def test_eval_sets(domain):
    items, report = load_eval(DATA / domain / "eval.jsonl")  # the loader checks answers against choices
    assert len(items) >= 100 and not report.skipped
    assert {i.task for i in items} == TASKS


@pytest.mark.parametrize("domain", DOMAINS)
def test_texts_are_varied(domain):
    texts = load_texts(DATA / domain / "texts")
    assert len(texts) >= 8
    words = sum(len(t.split()) for _, t in texts)
    assert words >= 15000  # token counts (>= 20k with the teacher's tokenizer) are checked in test_text_tokens
    # Not one template repeated: most lines are unique across the whole domain.
    lines = [ln.strip() for _, t in texts for ln in t.splitlines() if len(ln.strip()) > 30]
    assert len(set(lines)) >= 0.9 * len(lines)


def test_no_near_duplicates_across_splits():
    leaks = cross_split_leaks(DATA)
    assert leaks == [], leaks[:5]


@pytest.mark.real_teacher
@pytest.mark.parametrize("domain", DOMAINS)
def test_text_tokens(real_teacher, domain):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_teacher)
    n = sum(len(tok(t, add_special_tokens=False).input_ids) for _, t in load_texts(DATA / domain / "texts"))
    assert n >= 20000, n
