"""Cross-tokenizer distillation: the alignment on hand-made pieces (known spans, known mapping), the projection is
the identity for one tokenizer (so the loss is the same-tokenizer top-k loss), finite gradients when nothing aligns,
and the cache made from a served teacher's strings, then a distill from it with a student of another tokenizer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgedistill.distill import cross_tokenizer as xt
from edgedistill.distill import logit_cache as lc
from edgedistill.distill.losses import per_token_objective
from edgedistill.distill.settings import LossSettings


class HandPieces(xt.StudentPieces):
    """A student vocabulary given as its pieces (id = position); id 0 is special."""

    def __init__(self, pieces: list[str]):
        self.bytes = [p.encode() for p in pieces]
        self.by_bytes = {b: i for i, b in enumerate(self.bytes) if i}
        self.special = {self.bytes[0]: 0}
        self.longest = max(map(len, self.by_bytes))


VOCAB = ["<eos>", "Hel", "lo", " world", " wor", "ld", "!", "H"]


def _ids(*pieces):
    return [VOCAB.index(p) for p in pieces]


def test_the_alignment_on_known_spans_and_the_first_token_projection():
    sp = HandPieces(VOCAB)
    labels = _ids("Hel", "lo", " world", "!", "<eos>")  # student starts 0, 3, 5, 11, 12
    # the teacher's raw answer began with two spaces the record's response was stripped of
    pieces = [b"  ", b"Hello", b" wor", b"ld", b"!"]
    top = [[(b"  ", -0.3)],
           [(b"Hello", -0.1), (b"Hi", -2.5), (b"Hey", -3.0)],
           [(b" wor", -0.2), (b" there", -1.9), (b" world", -3.0)],
           [(b"ld", -0.05)],
           [(b"!", -0.5), (b"H", -1.5), (b"Hey", -2.0), (b" there", -3.5), (b"<|im_end|>", -4.0)]]
    stats = xt.Stats()
    ids, lps = xt.project("Hello world!", pieces, top, labels, sp, 4, stats, "r1")
    assert ids.shape == (5, 4) and lps.shape == (5, 4)
    # position 0 ("Hel", 0-3, within the teacher's "Hello", 0-5): Hello -> Hel (a prefix), Hi and Hey -> H, summed
    assert ids[0, :2].tolist() == _ids("Hel", "H")
    assert lps[0, 0] == pytest.approx(-0.1, abs=1e-6)
    assert lps[0, 1] == pytest.approx(math.log(math.exp(-2.5) + math.exp(-3.0)), abs=1e-6)
    assert (lps[0, 2:] == lc.FILLER_LOGPROB).all()
    # position 1 ("lo", start 3): inside the teacher's "Hello": the label alone
    assert ids[1, 0] == _ids("lo")[0] and lps[1, 0] == 0.0
    # position 2 (" world", 5-11): starts with the teacher's " wor" (5-9) but runs past it: the label alone
    assert ids[2, 0] == _ids(" world")[0] and lps[2, 0] == 0.0
    # position 3 ("!", 11-12 = the teacher's "!"): "!" and "H" exact, "Hey" -> "H"; " there" (no student piece
    # begins it) and another tokenizer's end of turn map to nothing
    assert ids[3, :2].tolist() == _ids("!", "H")
    assert lps[3, 1] == pytest.approx(math.log(math.exp(-1.5) + math.exp(-2.0)), abs=1e-6)
    # the end of turn: no teacher piece there
    assert ids[4, 0] == 0 and lps[4, 0] == 0.0
    s = stats.summary()
    assert stats.positions == 5 and stats.aligned == 2 and s["aligned_share"] == pytest.approx(0.4)
    top_mass = sum(math.exp(x) for x in (-0.1, -2.5, -3.0, -0.5, -1.5, -2.0, -3.5, -4.0))
    lost = math.exp(-3.5) + math.exp(-4.0)
    assert s["mass_kept"] == pytest.approx((top_mass - lost) / top_mass)
    exact = sum(math.exp(x) for x in (-0.5, -1.5))  # "!" and "H" are student pieces
    assert s["exact_mass_share"] == pytest.approx(exact / top_mass)
    assert s["records_unaligned"] == 0


def test_teacher_pieces_cut_at_max_length_align_as_far_as_they_go():
    """A teacher whose tokenizer needs more tokens is cut at max_length before the student is: its pieces spell
    the response's beginning only; the student's positions there align, the rest hold the labels alone."""
    sp = HandPieces(VOCAB)
    stats = xt.Stats()
    ids, lps = xt.project("Hello world!", [b" ", b"Hello", b" wor"], [[(b" ", -0.1)], [(b"Hello", -0.2)],
                                                                    [(b" world", -0.3)]],
                          _ids("Hel", "lo", " wor", "ld", "!"), sp, 3, stats, "cut")
    assert stats.records_unaligned == 0 and stats.aligned == 2  # "Hel" within "Hello", " wor" = " wor"
    assert ids[0, 0] == _ids("Hel")[0] and lps[0, 0] == pytest.approx(-0.2, abs=1e-6)
    assert ids[2, 0] == _ids(" world")[0] and lps[2, 0] == pytest.approx(-0.3, abs=1e-6)
    assert ids[4, 0] == _ids("!")[0] and lps[4, 0] == 0.0  # past the teacher's last piece: the label alone


def test_texts_that_do_not_match_hold_the_labels_alone_and_are_counted():
    sp = HandPieces(VOCAB)
    stats = xt.Stats()
    ids, lps = xt.project("Hello world!", [b"Goodbye"], [[(b"Good", -0.1)]], _ids("Hel", "lo"), sp, 3, stats, "x")
    assert ids[:, 0].tolist() == _ids("Hel", "lo") and (lps[:, 0] == 0).all()
    assert stats.aligned == 0 and stats.records_unaligned == 1 and "x:" in stats.summary()["first_unaligned"]


def test_nothing_aligned_gives_finite_gradients_equal_to_cross_entropy():
    sp = HandPieces(VOCAB)
    labels = _ids("Hel", "lo", "<eos>")
    ids, lps = xt.project("Hello", [], [], labels, sp, 4, xt.Stats())
    logits = torch.randn(1, 3, len(VOCAB), requires_grad=True)
    cfg = LossSettings(kd_weight=1.0)
    loss = per_token_objective(cfg, logits, (torch.from_numpy(lps)[None], torch.from_numpy(ids)[None]), None)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    ce = -torch.log_softmax(logits.detach(), -1)[0, torch.arange(3), torch.tensor(labels)]
    assert torch.allclose(loss.detach()[0], ce, atol=1e-3)  # the label alone: the KD term is cross-entropy


@pytest.fixture(scope="module")
def local_records(chatty, tmp_path_factory):
    """The tiny chat teacher's answers with its top-5 (torch engine) and the records encoded by its tokenizer."""
    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.engines import EngineSpec
    from tests.engines.test_engines import _prompts

    out = tmp_path_factory.mktemp("xt") / "gen.jsonl"
    generate(str(chatty[0]), _prompts(), out, DecodeSettings(max_new_tokens=24),
             engine=EngineSpec("torch", str(chatty[0])), loaded=chatty[2], logprobs=5)
    records = load_generations([out])
    return out, records, encode(chatty[2][1], records, 96)


def test_one_tokenizer_projects_to_the_same_rows_and_the_same_loss(chatty, local_records):
    """The teacher's pieces projected onto its own tokenizer are its top-k rows: same ids, same log-probabilities,
    hence the same-tokenizer top-k loss."""
    from edgedistill.engines.served import token_bytes

    _, records, data = local_records
    tok = chatty[2][1]
    same, filled = lc.rows_from_records(records, data, 5, len(tok))
    projected, stats = xt.rows(records, data, 5, xt.StudentPieces(tok), teacher_bytes=token_bytes(tok))
    assert stats.aligned == stats.positions - filled and stats.summary()["mass_kept"] == pytest.approx(1.0)
    cfg = LossSettings(kd_weight=0.5)
    for (a_ids, a_lp), (b_ids, b_lp), ex in zip(same, projected, data.examples):
        n = len(a_ids)
        logits = torch.randn(1, n, len(tok))
        labels = torch.tensor([x for x in ex["labels"] if x != -100])[None]
        la = per_token_objective(cfg, logits, (torch.from_numpy(a_lp)[None], torch.from_numpy(a_ids)[None]), labels)
        lb = per_token_objective(cfg, logits, (torch.from_numpy(b_lp)[None], torch.from_numpy(b_ids)[None]), labels)
        assert torch.allclose(la, lb, atol=1e-5)
        for r in range(n):  # the same distribution row by row (the order of equal log-probs may differ)
            keep = a_lp[r] > lc.FILLER_LOGPROB
            assert dict(zip(a_ids[r][keep].tolist(), a_lp[r][keep].tolist())) == pytest.approx(
                dict(zip(b_ids[r][b_lp[r] > lc.FILLER_LOGPROB].tolist(), b_lp[r][b_lp[r] > lc.FILLER_LOGPROB].tolist())))


@pytest.mark.slow
def test_a_served_teachers_strings_become_a_projected_cache_a_student_of_another_tokenizer_learns_from(
        chatty, local_records, serve, tmp_path):
    """generate --logprobs 5 with no tokenizer keeps the server's strings; cache-logits --student projects them
    (onto the teacher's own tokenizer: the rows the ids path gives; onto a Gemma 3 student: a cache over its
    encoding, with the alignment in cache.json); distill takes it as cross-tokenizer distillation; a cache made for
    one student is refused for another."""
    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.distill.stage import CacheSettings, DistillSettings, cache_logits, distill
    from edgedistill.engines import EngineSpec
    from tests.engines.test_engines import NO_PENALTY, _prompts
    from tests.families import TINY

    server = serve(chatty[1], "chatty")
    gen = tmp_path / "served.jsonl"
    generate(None, _prompts(), gen, DecodeSettings(max_new_tokens=24), logprobs=5,
             engine=EngineSpec("openai", None, url=server.url, served_model="chatty", extra_body=NO_PENALTY))
    recs = [json.loads(x) for x in gen.read_text().splitlines()]
    assert all("teacher_text_topk" in r and "teacher_topk" not in r for r in recs)
    assert all(len(r["teacher_text_topk"]["top"][0]) == 5 for r in recs)

    served = dict(teacher_engine="openai", teacher_url=server.url, teacher_model="chatty", generations=[gen], k=5,
                  max_length=96)
    own = cache_logits(CacheSettings(**served, out=tmp_path / "own", student=str(chatty[0])))
    assert own["projection"]["aligned_share"] > 0.8 and own["projection"]["mass_kept"] == pytest.approx(1.0, abs=1e-3)
    # the same answers aligned by the ids path (the server's tokens are this tokenizer's): the same rows
    gen_ids = tmp_path / "served-ids.jsonl"
    generate(None, _prompts(), gen_ids, DecodeSettings(max_new_tokens=24), logprobs=5,
             engine=EngineSpec("openai", None, url=server.url, served_model="chatty", tokenizer=str(chatty[0]),
                               extra_body=NO_PENALTY))
    for f in (gen, gen_ids):  # one order of records in both (the server answers concurrently)
        f.write_text("".join(sorted(f.read_text().splitlines(keepends=True), key=lambda x: json.loads(x)["id"])))
    own = cache_logits(CacheSettings(**served, out=tmp_path / "own-sorted", student=str(chatty[0])))
    by_ids = cache_logits(CacheSettings(**{**served, "generations": [gen_ids]}, out=tmp_path / "ids",
                                        tokenizer=str(chatty[0])))
    a, b = lc.load_arrays(tmp_path / "own-sorted"), lc.load_arrays(tmp_path / "ids")
    assert by_ids["tokens"] == own["tokens"]
    assert (a["ids"][:, 0] == b["ids"][:, 0]).all()
    assert np.abs(np.exp(a["logprobs"].astype(np.float64)) - np.exp(b["logprobs"].astype(np.float64))).max() < 2e-3

    student = TINY["gemma3"].build(tmp_path / "gemma", layers=2)
    meta = cache_logits(CacheSettings(**served, out=tmp_path / "cross", student=str(student)))
    p = meta["projection"]
    assert 0 < p["aligned_share"] < 1 and 0 < p["mass_kept"] <= 1 and p["records"] == len(recs)
    report = distill(DistillSettings(student=str(student), generations=[gen], logit_cache=tmp_path / "cross",
                                     out=tmp_path / "run", steps=2, batch_size=2, grad_accum=1, max_length=96,
                                     warmup_steps=0, kd_weight=0.5))
    assert report["pairing"]["kind"] == "cross" and report["steps"] == 2
    # a cache projected for one student is refused for a student of another tokenizer, naming both
    other = TINY["qwen3"].build(tmp_path / "qwen", layers=2)
    with pytest.raises(lc.StaleCacheError, match="projected onto"):
        distill(DistillSettings(student=str(other), generations=[gen], logit_cache=tmp_path / "cross",
                                out=tmp_path / "other", steps=1, max_length=96))
