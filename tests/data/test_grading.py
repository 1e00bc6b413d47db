import pytest

from edgedistill.data.grading import final_text, is_correct, predicted
from edgedistill.data.load import EvalItem

CLS = EvalItem("c", "classification", "Classify.", "billing", ("billing", "shipping", "technical", "account", "returns"))
YN = EvalItem("y", "yes_no", "Within window?", "no", ("yes", "no"))
MC = EvalItem("m", "multiple_choice", "Pick.", "C", ("A", "B", "C", "D"))
AR = EvalItem("a", "arithmetic", "How many?", "1250.5")
EX = EvalItem("e", "extraction", "Order number?", "NW-482913")


@pytest.mark.parametrize("item, response, ok", [
    (CLS, "billing", True),
    (CLS, "Billing.", True),
    (CLS, "This is a billing question, not shipping.", True),
    (CLS, "shipping (maybe billing)", False),  # the first label named counts
    (CLS, "prebilling", False),  # whole words only
    (CLS, "I am not sure.", False),
    (YN, "No, it is outside the 30-day window.", True),
    (YN, "Yes.", False),
    (YN, "Day 1 to day 40 is 39 days.\nAnswer: no", True),
    (YN, "Answer: yes\nActually, no.", False),  # after the last Answer: marker
    (MC, "C", True),
    (MC, "(C) The bearing", True),
    (MC, "The answer is C) 40 bar", True),
    (MC, "a bearing fails, so B", False),  # lower-case 'a' is an article, not option A
    (MC, "B", False),
    (AR, "1250.5", True),
    (AR, "1,250.50 EUR", True),
    (AR, "Step 1: 1000 + 250.5 = 1250.5\nAnswer: 1250.5", True),
    (AR, "Step 1: 1000 + 250 = 1250\nAnswer: 1250", False),
    (AR, "no idea", False),
    (EX, "NW-482913", True),
    (EX, "The order number is nw-482913.", True),
    (EX, "NW-482914", False),
    (EX, "x " * 60 + "NW-482913", False),  # echoing a whole paragraph does not count
])
def test_grading(item, response, ok):
    assert is_correct(item, response) is ok, predicted(item, response)


def test_final_text_takes_the_last_marker():
    assert final_text("Answer: 3\nwait\nANSWER: 4") == "4"
    assert final_text("  plain  ") == "plain"


@pytest.mark.parametrize("item, teacher, student, same", [
    (CLS, "It is billing.", "billing", True),
    (CLS, "billing", "shipping", False),
    (CLS, "no idea", "I cannot say", True),  # neither names a label: both did the same thing
    (CLS, "billing", "no idea", False),
    (YN, "Yes.", "yes, it is", True),
    (YN, "yes", "No", False),
    (MC, "Answer: (B)", "B) is right", True),
    (MC, "B", "C", False),
    (AR, "1,250.50 euros", "Answer: 1250.5", True),
    (AR, "1250.5", "1251", False),
    (AR, "twelve hundred", "no number", True),
    (EX, "NW-482913.", "  'nw-482913'", True),  # case, quotes and a final full stop set aside
    (EX, "NW-482913", "The order is NW-482913", False),  # a different answer, even if it contains the teacher's
], ids=lambda v: v if isinstance(v, (str, bool)) else getattr(v, "task", None))
def test_answer_agreement_on_each_task_type(item, teacher, student, same):
    from edgedistill.data.grading import same_answer

    assert same_answer(item, predicted(item, teacher), predicted(item, student)) is same


def test_chance_level_per_task_type():
    from edgedistill.data.grading import chance

    assert chance(CLS) == pytest.approx(0.2) and chance(YN) == 0.5 and chance(MC) == 0.25
    assert chance(AR) == 0 and chance(EX) == 0
