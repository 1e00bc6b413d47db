"""The teacher engines on a tiny chat model: every registered engine answers and keeps top-k log-probabilities; the
llama.cpp engine agrees with torch; a real llama.cpp server's answers become a logit cache a student trains from;
and the served engine survives the faults a real server has (killed and restarted, 500s, hangs, a wrong key)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedistill.data import Prompt
from edgedistill.data.generate import DecodeSettings, generate
from edgedistill.engines import EngineError, EngineSpec, engines, open_engine
from tests import tiny
from tests.conftest import run_cli
from tests.servers import FailingProxy, HangingServer

QUESTIONS = ["Where is my order?", "Lock out the press", "Machine M-204 raised alarm E17.", "Question 3?",
             "Refunds please", "Question 5?"]
GEN = DecodeSettings(max_new_tokens=24, answer_batch=4)
NO_PENALTY = {"repeat_penalty": 1.0}  # llama.cpp's server penalises repeats by default (1.1): not greedy


def _prompts(n=len(QUESTIONS)):
    return [Prompt(id=f"p{i}", messages=({"role": "user", "content": q},), category="c", domain="support")
            for i, q in enumerate(QUESTIONS[:n])]


@pytest.fixture(scope="session")
def reference(chatty):
    """The torch engine's answers with top-4 log-probabilities: what the others are compared with."""
    model_dir, _, loaded = chatty
    e = open_engine(EngineSpec("torch", str(model_dir)), loaded=loaded)
    return {a.index: a for a in e.answer([p.messages for p in _prompts()], GEN, logprobs=4)}


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _spec(engine, chatty, server=None, **kw):
    model_dir = chatty[0]
    if engine == "openai":
        return EngineSpec("openai", None, url=server.url, served_model="chatty", tokenizer=str(model_dir),
                          extra_body=NO_PENALTY, **kw)
    return EngineSpec(engine, str(model_dir), **kw)


def test_every_registered_engine_generates_with_logprobs(chatty, reference, serve, tmp_path):
    """Each engine answers the prompts, keeps the teacher's top-4 of every generated token, and agrees with torch
    (same text; same top-1 at every token; log-probabilities within float16 weights' reach)."""
    server = serve(chatty[1], "chatty")
    assert set(engines()) == {"torch", "llama.cpp", "openai"}  # a new engine needs its case here
    for name in engines():
        out = tmp_path / f"{name}.jsonl"
        r = generate(str(chatty[0]), _prompts(), out, GEN, engine=_spec(name, chatty, server), logprobs=4)
        assert r.written == len(QUESTIONS), name
        recs = {int(x["id"][1:]): x for x in _records(out)}
        assert {x["settings"].get("engine", "torch") for x in recs.values()} == {name}
        for i, ref in reference.items():
            rec = recs[i]
            assert rec["response"] == ref.text and rec["response"], (name, i)
            assert "teacher_topk" in rec, (name, i)
            top = rec["teacher_topk"]
            n = len(rec["teacher_tokens"])
            assert rec["teacher_tokens"] == ref.tokens[:n] and n >= len(ref.tokens) - 2, (name, i)  # openai: no stop
            assert [row[0] for row in top["ids"]] == [row[0] for row in ref.topk_ids[:n]], (name, i)
            got, want = np.array([row[0] for row in top["logprobs"]]), np.array([row[0] for row in ref.topk_logprobs[:n]])
            assert np.abs(got - want).max() < 2e-2, (name, i)


def test_llamacpp_scores_like_torch(chatty, tmp_path):
    """cache-logits through the llama.cpp engine (teacher-forced on its F16 GGUF) matches the torch engine's."""
    from edgedistill.distill import logit_cache as lc
    from edgedistill.distill.stage import CacheSettings, cache_logits

    gen = tmp_path / "gen.jsonl"
    generate(str(chatty[0]), _prompts(), gen, GEN, loaded=chatty[2])
    caches = {}
    for name in ("torch", "llama.cpp"):
        meta = cache_logits(CacheSettings(teacher=str(chatty[0]), generations=[gen], out=tmp_path / name, k=8, max_length=96,
                                          teacher_engine=name))
        assert meta["engine"]["engine"] == name and meta["positions_without_teacher_topk"] == 0
        caches[name] = lc.load_arrays(tmp_path / name)
    t, g = caches["torch"], caches["llama.cpp"]
    assert (t["ids"][:, 0] == g["ids"][:, 0]).all()
    assert np.abs(t["logprobs"].astype(np.float32) - g["logprobs"].astype(np.float32)).max() < 2e-2


def test_served_logprobs_become_a_cache_a_student_trains_from(chatty, serve, tmp_path):
    """generate --logprobs 5 against llama.cpp's server, cache-logits from those records (k = 5 < 64), distill."""
    from edgedistill.distill import logit_cache as lc
    from edgedistill.distill.stage import CacheSettings, DistillSettings, cache_logits, distill

    server = serve(chatty[1], "chatty")
    gen = tmp_path / "gen.jsonl"
    generate(None, _prompts(), gen, GEN, engine=_spec("openai", chatty, server), logprobs=5)
    meta = cache_logits(CacheSettings(generations=[gen], out=tmp_path / "cache", k=64, max_length=96, teacher_engine="openai",
                                      teacher_url=server.url, teacher_model="chatty", tokenizer=str(chatty[0])))
    assert meta["k"] == 5 and meta["engine"]["from"] == "records" and meta["teacher"] == "chatty"
    assert meta["positions_without_teacher_topk"] == len(QUESTIONS)  # each answer's end-of-turn token
    assert 0.5 < meta["teacher_mass_in_top_k"] <= 1
    served = lc.load_arrays(tmp_path / "cache")

    # The same positions scored by the torch teacher: its top-5 distribution is the server's (KL near 0).
    cache_logits(CacheSettings(teacher=str(chatty[0]), generations=[gen], out=tmp_path / "local", k=5, max_length=96, teacher_engine="torch"))
    local = lc.load_arrays(tmp_path / "local")
    keep = served["logprobs"][:, 0] < 0  # positions the server reported (not label-only fills)
    p, q = np.exp(local["logprobs"][keep].astype(np.float64)), np.exp(served["logprobs"][keep].astype(np.float64))
    assert (local["ids"][keep][:, 0] == served["ids"][keep][:, 0]).all()
    assert np.abs(p - q).max() < 2e-2

    student = tiny.build_model_dir(tmp_path / "student", seed=3)
    local_gen = tmp_path / "local.jsonl"  # the same prompts answered by the local teacher: not the cache's records
    generate(str(chatty[0]), _prompts(), local_gen, GEN, loaded=chatty[2])
    with pytest.raises(lc.StaleCacheError, match="other teachers' answers"):
        distill(DistillSettings(student=str(student), generations=[local_gen], logit_cache=tmp_path / "cache",
                                out=tmp_path / "stale", steps=1, max_length=96))
    assert not (tmp_path / "stale" / "student").exists()
    report = distill(DistillSettings(student=str(student), generations=[gen], logit_cache=tmp_path / "cache",
                                     out=tmp_path / "run", steps=2, batch_size=2, grad_accum=1, max_length=96,
                                     warmup_steps=0))
    assert report["steps"] == 2 and (tmp_path / "run" / "student" / "config.json").is_file()
    # the run names the teacher it learnt from (the served one), not the local default it never loaded
    import yaml

    assert report["teacher"] == "chatty"
    assert yaml.safe_load((tmp_path / "run" / "settings.yaml").read_text())["teacher"] == "chatty"


def test_another_tokenizer_is_refused_with_both_tokenizations(chatty, serve, tmp_path):
    server = serve(chatty[1], "chatty")
    other = tmp_path / "other"
    tok = tiny.build_tokenizer(vocab_size=280)
    tok.save_pretrained(other)
    (other / "config.json").write_text("{}")
    out = tmp_path / "gen.jsonl"
    spec = EngineSpec("openai", None, url=server.url, served_model="chatty", tokenizer=str(other), concurrency=1)
    with pytest.raises(EngineError, match=r"served tokens are not this tokenizer's .* the server has \[.*\], the tokenizer \["):
        generate(None, _prompts(2), out, GEN, engine=spec, logprobs=4)
    assert not out.exists() or out.read_text() == ""
    fallback = EngineSpec("openai", None, url=server.url, served_model="chatty", tokenizer=str(other),
                          sequence_level_fallback=True)
    assert generate(None, _prompts(2), out, GEN, engine=fallback, logprobs=4).written == 2
    assert all("teacher_topk" not in r and r["response"] for r in _records(out))


class _KillAfter:
    """A progress sink that stops the server after n answers have been written."""

    def __init__(self, server, n):
        self.server, self.n, self.seen = server, n, 0

    def add_task(self, *a, **k):
        return 0

    def advance(self, task, by=1):
        self.seen += by
        if self.seen == self.n:
            self.server.stop()


def test_server_killed_mid_run_then_restarted_completes_exactly_once(chatty, serve, tmp_path):
    from tests.servers import LlamaServer

    server = serve(chatty[1], "chatty")
    out = tmp_path / "gen.jsonl"
    spec = _spec("openai", chatty, server, concurrency=1, retries=1, timeout_s=10)
    with pytest.raises(EngineError, match=f"cannot reach the teacher server at {server.url}"):
        generate(None, _prompts(), out, GEN, engine=spec, logprobs=4, progress=_KillAfter(server, 2))
    assert 2 <= len(_records(out)) < len(QUESTIONS)
    again = LlamaServer(chatty[1], "chatty", port=server.port).start()
    try:
        r = generate(None, _prompts(), out, GEN, engine=spec, logprobs=4)
    finally:
        again.stop()
    ids = [x["id"] for x in _records(out)]
    assert sorted(ids) == sorted(p.id for p in _prompts()) and r.already_done + r.written == len(QUESTIONS)


def test_500_twice_then_success(chatty, serve, tmp_path):
    server = serve(chatty[1], "chatty")
    proxy = FailingProxy(server.url, failures=2)
    try:
        spec = EngineSpec("openai", None, url=proxy.url, served_model="chatty", concurrency=1, retries=2)
        assert generate(None, _prompts(1), tmp_path / "gen.jsonl", GEN, engine=spec).written == 1
        assert proxy.failed == 2
    finally:
        proxy.close()


def test_a_server_that_hangs_times_out_and_nothing_is_written(tmp_path):
    hang = HangingServer()
    try:
        spec = EngineSpec("openai", None, url=hang.url, served_model="m", timeout_s=1, retries=0)
        with pytest.raises(EngineError, match=rf"{hang.url} did not answer within 1 s"):
            generate(None, _prompts(1), tmp_path / "gen.jsonl", GEN, engine=spec)
        assert not (tmp_path / "gen.jsonl").exists()
    finally:
        hang.close()


def test_a_wrong_api_key_is_one_line_naming_the_url(chatty, serve, tmp_path):
    server = serve(chatty[1], "chatty", api_key="right-key-123")
    out = tmp_path / "gen.jsonl"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "Where is my order?"}) + "\n")
    r = run_cli("generate", "--teacher-engine", "openai", "--teacher-url", server.url, "--teacher-model", "chatty",
                "--api-key-env", "TEACHER_KEY", "--prompts", str(prompts), "--out", str(out),
                env={"TEACHER_KEY": "wrong-key-456"})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and server.url in lines[0] and "401" in lines[0], r.stderr
    assert "wrong-key-456" not in r.stderr + r.stdout and not out.exists()
    ok = run_cli("generate", "--teacher-engine", "openai", "--teacher-url", server.url, "--teacher-model", "chatty",
                 "--api-key-env", "TEACHER_KEY", "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "8",
                 env={"TEACHER_KEY": "right-key-123"})
    assert ok.returncode == 0, ok.stderr
    assert "right-key-123" not in out.read_text() + (tmp_path / "gen.settings.yaml").read_text()


@pytest.mark.real_teacher
def test_real_teacher_through_its_server_and_in_process(real_teacher, serve, tmp_path):
    """The default teacher's F16 GGUF: llama.cpp's server and the in-process engine give the same greedy answers,
    and the server's log-probabilities align to the teacher's own tokenizer."""
    from edgedistill.engines.llamacpp import LlamaCppEngine

    prompts = [Prompt(id="a", messages=({"role": "user", "content": "What is the capital of France?"},)),
               Prompt(id="b", messages=({"role": "user", "content": "My parcel arrived damaged. What can I do?"},))]
    g = DecodeSettings(max_new_tokens=32, answer_batch=2)
    local = generate("smollm2-135m-instruct", prompts, tmp_path / "local.jsonl", g,
                     engine=EngineSpec("llama.cpp", "smollm2-135m-instruct"), logprobs=5)
    assert local.written == 2
    gguf = LlamaCppEngine.open(EngineSpec("llama.cpp", "smollm2-135m-instruct")).gguf
    server = serve(gguf, "smollm2")
    spec = EngineSpec("openai", None, url=server.url, served_model="smollm2", tokenizer="smollm2-135m-instruct",
                      extra_body=NO_PENALTY)
    assert generate(None, prompts, tmp_path / "served.jsonl", g, engine=spec, logprobs=5).written == 2
    a = {r["id"]: r for r in _records(tmp_path / "local.jsonl")}
    b = {r["id"]: r for r in _records(tmp_path / "served.jsonl")}
    for k in a:
        assert a[k]["response"] == b[k]["response"] and len(a[k]["response"]) > 10
        n = len(b[k]["teacher_tokens"])
        assert a[k]["teacher_tokens"][:n] == b[k]["teacher_tokens"]
        assert [r[0] for r in a[k]["teacher_topk"]["ids"][:n]] == [r[0] for r in b[k]["teacher_topk"]["ids"]]


def test_engine_settings_are_checked_before_any_work(tmp_path):
    data = tmp_path / "gen.jsonl"
    data.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}], "response": "hello"}) + "\n")
    cases = [
        (["generate", "--teacher-engine", "openai", "--split", "train", "--out", str(tmp_path / "g.jsonl")],
         "needs --teacher-url and --teacher-model"),
        (["generate", "--teacher-engine", "openai", "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m",
          "--logprobs", "50", "--tokenizer", "x", "--split", "train", "--out", str(tmp_path / "g.jsonl")],
         "at most 20"),
        (["cache-logits", "--teacher-engine", "openai", "--teacher-url", "ftp://x", "--teacher-model", "m", "--generations",
          str(data), "--out", str(tmp_path / "c")], "is not an http:// or https:// URL"),
        # a URL the HTTP client would choke on inside the first request (a traceback before this check)
        (["generate", "--teacher-engine", "openai", "--teacher-url", "http://[::1/v1", "--teacher-model", "m",
          "--split", "train", "--out", str(tmp_path / "g.jsonl")], "is not a valid URL (Invalid IPv6 URL)"),
        (["generate", "--teacher-engine", "openai", "--teacher-url", "http://127.0.0.1:80a/v1", "--teacher-model", "m",
          "--split", "train", "--out", str(tmp_path / "g.jsonl")], "is not a valid URL"),
        (["generate", "--teacher-url", "http://127.0.0.1:9/v1", "--split", "train", "--out", str(tmp_path / "g.jsonl")],
         "a served teacher needs --teacher-url and --teacher-model"),  # a URL names the openai engine
        (["generate", "--teacher-engine", "torch", "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m",
          "--split", "train", "--out", str(tmp_path / "g.jsonl")], "are for --teacher-engine openai"),
        (["generate", "--teacher-engine", "openai", "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m",
          "--teacher-extra-body", "[1]", "--split", "train", "--out", str(tmp_path / "g.jsonl")], "JSON object"),
        (["generate", "--teacher-api", "completions", "--split", "train", "--out", str(tmp_path / "g.jsonl")],
         "is for a served teacher"),
    ]
    for args, message in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path / "g.jsonl").exists() and not (tmp_path / "c").exists()


def test_aligner_tells_a_non_canonical_split_from_another_tokenizer():
    """A model may write " dry" + "er" where encoding the text gives " dryer": the same tokenizer, so that answer
    keeps its text alone (None); a piece the tokenizer does not have is another tokenizer, refused."""
    from types import SimpleNamespace as NS

    from edgedistill.engines.served import Aligner

    tok = tiny.build_tokenizer()
    al = Aligner(tok)
    text = "Where is my order?"
    pieces = [tok.decode([i]) for i in tok(text, add_special_tokens=False).input_ids]
    content = [NS(token=p, bytes=None, logprob=-0.1, top_logprobs=[NS(token=p, bytes=None, logprob=-0.1)])
               for p in pieces]
    ids, top_ids, _ = al.align(text, content)
    assert ids == tok(text, add_special_tokens=False).input_ids and [r[0] for r in top_ids] == ids
    longest = max(range(len(pieces)), key=lambda j: len(pieces[j]))
    split = pieces[longest]
    assert len(split) > 1 and all(c.encode() in al.ids for c in split)  # byte-level BPE: every byte is a token
    chars = pieces[:longest] + list(split) + pieces[longest + 1 :]  # the longest piece, one character at a time
    assert al.align(text, [NS(token=p, bytes=None, logprob=-0.1, top_logprobs=[]) for p in chars]) is None
    foreign = pieces[:1] + ["\u00e9t\u00e9-x-y-z"] + pieces[1:]
    with pytest.raises(EngineError, match="served tokens are not this tokenizer's"):
        al.align(text, [NS(token=p, bytes=None, logprob=-0.1, top_logprobs=[]) for p in foreign])


def test_completions_api_answers_like_chat_and_the_server_scores_text_like_torch(chatty, reference, serve, tmp_path):
    """--teacher-api completions: the prompt rendered here with the tokenizer's template gives the chat API's greedy
    answers and top-4; echoed log-probabilities give the teacher's NLL of given answers, as the torch model does.
    Its data are another teacher's (the fingerprint names the API)."""
    from edgedistill.data.text_fidelity import teacher_nll
    from edgedistill.engines import identity

    server = serve(chatty[1], "chatty")
    spec = _spec("openai", chatty, server, api="completions")
    assert identity(spec)[1] != identity(_spec("openai", chatty, server))[1]
    out = tmp_path / "completions.jsonl"
    r = generate(None, _prompts(), out, GEN, engine=spec, logprobs=4)
    assert r.written == len(QUESTIONS) and r.calls["requests"] == len(QUESTIONS)
    recs = {int(x["id"][1:]): x for x in _records(out)}
    assert {x["settings"].get("api") for x in recs.values()} == {"completions"}
    for i, ref in reference.items():
        assert recs[i]["response"] == ref.text, i
        n = len(recs[i]["teacher_tokens"])
        assert n and recs[i]["teacher_tokens"] == ref.tokens[:n], i
        assert [row[0] for row in recs[i]["teacher_topk"]["ids"]] == [row[0] for row in ref.topk_ids[:n]], i

    # scoring: answers that are and are not the teacher's own, against the torch model teacher-forced
    items = [(f"p{i}", p.messages, text) for i, (p, text) in
             enumerate(zip(_prompts(), [reference[0].text, "Refunds take five days.", reference[2].text, "",
                                        "zzz qqq", reference[5].text]))]
    e = open_engine(spec)
    try:
        served = e.score_texts(items)
    finally:
        e.close()
    local = teacher_nll(chatty[2][0], chatty[2][1], items)
    assert set(served) == set(local) == {"p0", "p1", "p2", "p4", "p5"}  # the empty answer has no bytes to score
    for k in local:
        assert served[k][1] == local[k][1]
        assert abs(served[k][0] - local[k][0]) < 0.05 * local[k][0] + 0.1, (k, served[k], local[k])
    assert served["p4"][0] / served["p4"][1] > served["p0"][0] / served["p0"][1]  # gibberish is less likely


def test_completions_api_on_a_base_model_without_a_tokenizer(chatty, serve, tmp_path):
    """Without --tokenizer the completions prompt is the contents joined by newlines (a base model's prompt)."""
    from edgedistill.engines.served import completion_prompt

    assert completion_prompt(None, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]) \
        == "Be brief.\nHi\n"
    server = serve(chatty[1], "chatty")
    spec = EngineSpec("openai", None, url=server.url, served_model="chatty", api="completions", extra_body=NO_PENALTY)
    r = generate(None, _prompts(2), tmp_path / "base.jsonl", GEN, engine=spec)
    assert r.written + r.empty == 2 and r.calls["requests"] == 2


@pytest.mark.parametrize("status", [429, 503])
def test_a_rate_limit_is_waited_out_counted_and_said(chatty, serve, tmp_path, status):
    import time

    server = serve(chatty[1], "chatty")
    proxy = FailingProxy(server.url, failures=2, status=status, retry_after="1")
    try:
        spec = EngineSpec("openai", None, url=proxy.url, served_model="chatty", concurrency=1, retries=3)
        t0 = time.monotonic()
        r = generate(None, _prompts(1), tmp_path / "gen.jsonl", GEN, engine=spec)
        assert r.written == 1 and proxy.failed == 2 and time.monotonic() - t0 >= 2  # Retry-After honoured, twice
        assert r.calls["rate_limited"] == 2 and "2 rate limits (429/503) waited out" in r.line()
    finally:
        proxy.close()


def test_a_body_cut_short_is_asked_again_and_then_refused_in_one_line(chatty, serve, tmp_path):
    server = serve(chatty[1], "chatty")
    once = FailingProxy(server.url, truncate=1)
    always = FailingProxy(server.url, truncate=100)
    try:
        spec = EngineSpec("openai", None, url=once.url, served_model="chatty", concurrency=1, retries=2)
        r = generate(None, _prompts(1), tmp_path / "gen.jsonl", GEN, engine=spec)
        assert r.written == 1 and r.calls["malformed"] == 1 and "1 malformed responses asked again" in r.line()
        spec = EngineSpec("openai", None, url=always.url, served_model="chatty", concurrency=1, retries=2)
        with pytest.raises(EngineError, match=rf"{always.url} answered with a body that is not a complete response"):
            generate(None, _prompts(1), tmp_path / "new" / "other.jsonl", GEN, engine=spec)
        assert not (tmp_path / "new").exists()  # neither the file nor the folder made for it
    finally:
        once.close()
        always.close()


def test_another_model_behind_the_same_name_is_never_mixed_in(chatty, serve, tmp_path):
    from edgedistill.data import DataError

    server = serve(chatty[1], "chatty")
    out = tmp_path / "gen.jsonl"
    january = FailingProxy(server.url, model="chatty-2026-01")
    june = FailingProxy(server.url, model="chatty-2026-06")
    try:
        spec = EngineSpec("openai", None, url=january.url, served_model="chatty", concurrency=1)
        assert generate(None, _prompts(2), out, GEN, engine=spec).written == 2
        assert {r["teacher_reported_model"] for r in _records(out)} == {"chatty-2026-01"}
        spec = EngineSpec("openai", None, url=june.url, served_model="chatty", concurrency=1)
        with pytest.raises(DataError, match="reports model 'chatty-2026-06' behind --teacher-model chatty.*chatty-2026-01"):
            generate(None, _prompts(4), out, GEN, engine=spec)
        assert len(_records(out)) == 2  # what the first model wrote stays, nothing of the second is added
        spec = EngineSpec("openai", None, url=january.url, served_model="chatty", concurrency=1)
        assert generate(None, _prompts(4), out, GEN, engine=spec).written == 2  # the same model again: continues
    finally:
        january.close()
        june.close()


def test_ctrl_c_stops_a_served_generate_at_once(chatty, serve, tmp_path):
    """Requests in flight on a slow server do not hold the command: Ctrl-C ends it in seconds, exit 130."""
    from tests.servers import interrupt_once_asked

    server = serve(chatty[1], "chatty")
    slow = FailingProxy(server.url, delay=60)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    try:
        code, err, stopped = interrupt_once_asked(["generate", "--teacher-url", slow.url, "--teacher-model", "chatty",
                                                   "--prompts", str(prompts), "--out", str(tmp_path / "gen.jsonl")],
                                                  slow, 60)
        assert code == 130 and "interrupted" in err and "Traceback" not in err, err
        assert stopped < 5, f"took {stopped:.1f} s to stop"  # the requests in flight wait 60 s
    finally:
        slow.close()

def test_requests_adapt_to_a_server_that_answers_one_at_a_time(chatty, serve, tmp_path):
    """Four requests at once against a one-slot server that takes a second each, a 3 s timeout: the ones that queue
    past it are not lost nor failed: fewer go at once and every prompt is answered."""
    server = serve(chatty[1], "chatty")
    slow = FailingProxy(server.url, delay=1.0, one_slot=True)
    try:
        spec = EngineSpec("openai", None, url=slow.url, served_model="chatty", concurrency=4, retries=3, timeout_s=3)
        r = generate(None, _prompts(4), tmp_path / "gen.jsonl", GEN, engine=spec)
        assert r.written == 4 and r.calls["timeouts"] >= 1 and "asked again with fewer at once" in r.line()
    finally:
        slow.close()
