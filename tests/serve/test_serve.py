"""edgedistill serve: the real server (a subprocess on 127.0.0.1, a free port) over tiny bundles of both backends,
driven by the official openai client; limits and errors; the queue, timeouts, disconnects and the drain on a
real model whose pace the test controls; SIGTERM; the example app's --url mode."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from edgedistill.runtime import load
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end trips over shared tiny bundles: make test, not the quick loop

KEY = "s3cret-key-for-tests"
MSGS = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def bundles(tiny_bundles) -> Path:
    return tiny_bundles[1]


@contextlib.contextmanager
def server(bundle: Path, *args: str, env: dict | None = None):
    """`edgedistill serve BUNDLE --port 0 ARGS` in a subprocess; yields (base url, process, output lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgedistill", "serve", str(bundle), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving "):
            url = line.split(" on ")[-1].strip()
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert url is not None, "".join(lines)
        yield url, proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        reader.join(5)


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


@pytest.mark.parametrize("fmt", ["gguf-f16", "onnx-fp32"])
def test_the_openai_client_chats_streams_stops_and_completes(bundles, fmt):
    with load(bundles / fmt) as m:
        want = m.chat(MSGS, max_tokens=12)
        prompt_tokens = len(m.encode(m.render_chat(MSGS)))
        want_completion = m.generate("Refund requests", max_tokens=8)
    with server(bundles / fmt, "--api-key-env", "EDGE_KEY", env={"EDGE_KEY": KEY}) as (url, proc, lines):
        c = client(url)
        listed = c.models.list().data
        assert [x.id for x in listed] == [fmt] and listed[0].model_extra["format"] == fmt.split("-")[0]
        r = c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=12, temperature=0)
        assert r.choices[0].message.content == want
        assert r.usage.prompt_tokens == prompt_tokens
        n = r.usage.completion_tokens
        assert 1 <= n <= 12 and r.usage.total_tokens == prompt_tokens + n
        assert r.choices[0].finish_reason == ("length" if n == 12 else "stop")

        chunks = list(c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=12, temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n

        stop = want[len(want) // 2:len(want) // 2 + 2]
        s = c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=12, temperature=0, stop=[stop])
        assert s.choices[0].message.content == want[:want.find(stop)] and s.choices[0].finish_reason == "stop"

        a, b = (c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=8, temperature=0.9, top_p=0.9, seed=3)
                for _ in range(2))
        assert a.choices[0].message.content == b.choices[0].message.content

        t = c.completions.create(model=fmt, prompt="Refund requests", max_tokens=8, temperature=0)
        assert t.choices[0].text == want_completion and t.usage.completion_tokens <= 8
        streamed = "".join(x.choices[0].text for x in c.completions.create(
            model=fmt, prompt="Refund requests", max_tokens=8, temperature=0, stream=True))
        assert streamed == want_completion
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["completed"] == 7
    assert proc.returncode == 0
    assert KEY not in "".join(lines)


@pytest.mark.parametrize("fmt", ["gguf-q8_0", "onnx-fp32"])
def test_json_answers_and_tool_calls_through_the_openai_client(bundles, fmt):
    """response_format json_schema / json_object and tools with tool_choice required / named, streamed and not, in
    the shapes the official client parses; a schema that cannot be enforced is a 400 naming the keyword."""
    import jsonschema

    from tests.runtime.test_constrain import ASK, NESTED, TOOLS

    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    with server(bundles / fmt) as (url, proc, lines):
        c = client(url)
        fmt_schema = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": NESTED}}
        r = c.chat.completions.create(model=fmt, messages=ASK, response_format=fmt_schema, max_tokens=200, seed=1)
        jsonschema.validate(json.loads(r.choices[0].message.content), NESTED)
        # any object: its strings are unbounded, so greedy (a sampled tiny model may ramble past max_tokens)
        chunks = list(c.chat.completions.create(model=fmt, messages=ASK, response_format={"type": "json_object"},
                                                max_tokens=300, temperature=0, stream=True))
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
        assert isinstance(json.loads("".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)), dict)

        r = c.chat.completions.create(model=fmt, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200,
                                      seed=2)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and msg.content is None and len(msg.tool_calls) == 1
        call = msg.tool_calls[0]
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])

        chunks = list(c.chat.completions.create(model=fmt, messages=ASK, tools=TOOLS, max_tokens=200, stream=True,
                                                seed=3, tool_choice={"type": "function", "function": {"name": "refund"}}))
        deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
        assert [d.function.name for d in deltas] == ["refund"] and deltas[0].index == 0
        jsonschema.validate(json.loads(deltas[0].function.arguments), params["refund"])
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"

        # the call's result sent back: the conversation goes on (the template takes tool turns)
        back = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": '{"refund": "sent"}'}]
        again = c.chat.completions.create(model=fmt, messages=back, tools=TOOLS, max_tokens=8)
        assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")

        with pytest.raises(openai.BadRequestError, match="'minimum' is not supported") as e:
            c.chat.completions.create(model=fmt, messages=ASK, response_format={"type": "json_schema", "json_schema": {
                "name": "n", "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}})
        assert e.value.status_code == 400 and e.value.body["param"] == "response_format"
    assert proc.returncode == 0


def test_bad_requests_get_json_errors_and_the_key_is_checked(bundles):
    fmt = "gguf-f16"
    with server(bundles / fmt, "--api-key-env", "EDGE_KEY", "--max-tokens", "32", "--max-body-bytes", "4096",
                "--max-prompt-tokens", "64", env={"EDGE_KEY": KEY}) as (url, proc, lines):
        c = client(url)
        bad = [dict(temperature=5), dict(max_tokens=33), dict(n=2), dict(top_p=0),
               dict(tools=[{"type": "function", "function": {"name": "f"}}],
                    tool_choice={"type": "function", "function": {"name": "g"}}),
               dict(functions=[{"name": "f"}]),
               dict(messages=[{"role": "user", "content": [{"type": "image_url",
                                                             "image_url": {"url": "file:///etc/passwd"}}]}]),
               dict(messages=[{"role": "user", "content": "word " * 200}]), dict(messages=[]),
               dict(stop=["a", "b", "c", "d", "e"])]
        for extra in bad:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(**{"model": fmt, "messages": MSGS, **extra})
            assert e.value.status_code == 400 and e.value.body["message"], extra
        with pytest.raises(openai.BadRequestError, match="only text parts"):
            c.chat.completions.create(model=fmt, messages=[{"role": "user", "content": [
                {"type": "input_file", "file": {"file_id": "/etc/passwd"}}]}])
        with pytest.raises(openai.NotFoundError, match="gguf-f16"):
            c.chat.completions.create(model="gpt-4o", messages=MSGS)
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").chat.completions.create(model=fmt, messages=MSGS)
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        r = httpx.post(url + "/chat/completions", content=b"{not json", headers=headers)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = httpx.post(url + "/chat/completions", content=b"[1, 2]", headers=headers)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        big = json.dumps({"model": fmt, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        r = httpx.post(url + "/chat/completions", content=big, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunked():  # no Content-Length: the limit is counted as the body arrives
            yield b'{"model": "gguf-f16", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        r = httpx.post(url + "/chat/completions", content=chunked(), headers=headers)
        assert r.status_code == 413
        r = httpx.post(url + "/chat/completions", json={"model": fmt, "messages": MSGS})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = httpx.get(url + "/nothing-here", headers=headers)
        assert r.status_code == 404 and "error" in r.json()
        assert httpx.get(url.removesuffix("/v1") + "/health").json()["status"] == "ok"  # open: tells nothing secret
        ok = c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=4)
        assert ok.usage.completion_tokens <= 4
    assert proc.returncode == 0
    assert KEY not in "".join(lines) and "Traceback" not in "".join(lines)


class Paced:
    """A real loaded model whose tokens wait for `gate` (set by the test): a request stays running as long as the
    test wants, so the queue, the timeout, disconnects and the drain can be checked without races."""

    def __init__(self, model):
        self.model, self.gate, self.tokens = model, threading.Event(), 0
        self.hold_after: int | None = None  # close the gate again once this many tokens have passed

    def __getattr__(self, name):
        return getattr(self.model, name)

    def stream_ids(self, ids, cfg, done=None):
        # past the end of turn too: a sampled end can never finish a request the test means to cancel
        for piece in self.model.stream_ids(ids, dataclasses.replace(cfg, ignore_eos=True), done):
            self.gate.wait(30)
            self.tokens += 1
            if self.tokens == self.hold_after:
                self.gate.clear()
            yield piece


@contextlib.contextmanager
def in_process(model, bundle: Path, **settings):
    import uvicorn

    from edgedistill.serve import ServeSettings
    from edgedistill.serve.app import build_app
    from edgedistill.serve.server import listen

    s = ServeSettings(bundle=bundle, **settings)
    app = build_app(model, s)
    sock = listen("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", app.state.worker
    finally:
        model.gate.set()
        srv.should_exit = True
        th.join(30)
        app.state.worker.close()
        sock.close()


def _health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health").json()


def _wait(cond, what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.02)


def test_the_queue_is_bounded_then_429_with_retry_after(bundles):
    fmt = "gguf-f16"
    model = Paced(load(bundles / fmt))
    with in_process(model, bundles / fmt, queue=1) as (url, worker):
        c = client(url)
        results = {}

        def ask(name):
            results[name] = c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=6, temperature=0)

        running = threading.Thread(target=ask, args=("running",))
        running.start()
        _wait(lambda: worker.pending == 1, "the first request did not start")
        waiting = threading.Thread(target=ask, args=("waiting",))
        waiting.start()
        _wait(lambda: worker.pending == 2, "the second request did not queue")
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=6)
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.body["code"] == "queue_full"
        model.gate.set()
        running.join(30)
        waiting.join(30)
        assert results["running"].choices[0].message.content == results["waiting"].choices[0].message.content
        assert _health(url)["rejected"] == 1 and _health(url)["completed"] == 2
    model.model.close()


def test_timeouts_disconnects_and_the_drain_end_requests_cleanly(bundles):
    fmt = "onnx-fp32"
    model = Paced(load(bundles / fmt))
    with in_process(model, bundles / fmt, timeout=1.0) as (url, worker):
        c = client(url)
        # a request whose tokens do not come within --timeout: 504 with a JSON error, and the worker is free again
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=6)
        assert e.value.status_code == 504 and e.value.body["code"] == "timeout"
        model.gate.set()
        _wait(lambda: worker.pending == 0, "the timed-out generation did not stop")

        # a client that leaves mid-stream: its generation stops at the next token
        model.gate.clear()
        model.tokens = 0
        jobs = []
        submit = worker.submit
        worker.submit = lambda *a: jobs.append(submit(*a)) or jobs[-1]
        with httpx.stream("POST", url + "/chat/completions", json={"model": fmt, "messages": MSGS, "max_tokens": 200,
                                                                   "stream": True, "temperature": 0.8}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk: the request is running
            model.hold_after = 1  # the second token waits until the server has seen the client go
            model.gate.set()
            _wait(lambda: model.tokens >= 1, "no token was generated")
        _wait(lambda: jobs[0].cancelled.is_set(), "the server did not notice the client leave")
        model.gate.set()
        _wait(lambda: worker.pending == 0, "the generation of a gone client did not stop")
        assert model.tokens == 2 and _health(url)["cancelled"] == 1
        worker.submit = submit

    model = Paced(load(bundles / fmt))
    with in_process(model, bundles / fmt, timeout=30.0) as (url, worker):
        c = client(url)
        stream = c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=50, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        worker.drain(0)  # what SIGTERM does, with no grace left: the running answer ends with an error event
        model.gate.set()
        with pytest.raises(openai.APIError, match="shut down"):
            list(stream)
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 503
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=fmt, messages=MSGS, max_tokens=4)
        assert e.value.status_code == 503 and e.value.body["code"] == "shutting_down"
    model.model.close()


def test_sigterm_lets_the_running_stream_finish_and_exits_cleanly(bundles):
    fmt = "gguf-f16"
    with server(bundles / fmt, "--shutdown-grace", "20s") as (url, proc, lines):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        body = {"model": fmt, "messages": MSGS, "max_tokens": 64, "stream": True, "temperature": 0.8, "seed": 1}
        with httpx.stream("POST", url + "/chat/completions", json=body, timeout=60) as r:
            events = r.iter_lines()
            assert next(events).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            rest = [e for e in events if e]
        assert rest[-1] == "data: [DONE]" and not any('"error"' in e for e in rest)
        assert proc.wait(timeout=60) == 0
    assert "stopped: 1 completed" in "".join(lines)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_start_up_refusals_are_one_line(bundles, tmp_path):
    from tests.conftest import run_cli

    fmt = "gguf-f16"
    b = tmp_path / fmt
    shutil.copytree(bundles / fmt, b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["deployment"] = {"target": "laptop", "deployable": False,
                              "safety": {"refusal_rate": {"pass": False}, "over_refusal": {"pass": True}}}
    (b / "manifest.json").write_text(json.dumps(manifest))
    refused = run_cli("serve", str(b), "--port", "0", timeout=120)
    assert refused.returncode == 2 and "NOT DEPLOYABLE" in refused.stderr and "--allow-undeployable" in refused.stderr
    assert "Traceback" not in refused.stderr
    with server(b, "--allow-undeployable") as (url, proc, lines):
        info = httpx.get(url + "/models").json()["data"][0]
        assert info["deployable"] is False and info["deployment"]["target"] == "laptop"
    assert any(line.startswith("warning: serving") and "refusal_rate" in line for line in lines)

    no_key = run_cli("serve", str(bundles / fmt), "--api-key-env", "EDGE_UNSET_KEY", env={"EDGE_UNSET_KEY": ""})
    assert no_key.returncode == 2 and "EDGE_UNSET_KEY" in no_key.stderr and len(no_key.stderr.splitlines()) == 1
    model_file = b / manifest["model_file"]
    with open(model_file, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    tampered = run_cli("serve", str(b), "--allow-undeployable", "--port", "0", timeout=120)
    assert tampered.returncode == 2 and "sha256" in tampered.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = run_cli("serve", str(bundles / fmt), "--port", str(taken.getsockname()[1]), timeout=120)
    assert busy.returncode == 2 and "cannot listen" in busy.stderr and "Traceback" not in busy.stderr
    bad = run_cli("serve", str(bundles / fmt), "--queue", "-1", "--timeout", "0")
    assert bad.returncode == 2 and "queue" in bad.stderr and "timeout" in bad.stderr


def test_non_loopback_hosts_are_warned_about():
    from edgedistill.serve import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", "k") is None
    assert "no API key" in exposure_warning("0.0.0.0", None)
    assert "network" in exposure_warning("192.168.1.5", "k") and "no API key" not in exposure_warning("10.0.0.1", "k")


def test_the_example_app_asks_a_running_server(bundles):
    import runpy

    fmt = "onnx-fp32"
    system = runpy.run_path(str(REPO / "examples" / "support_desk.py"))["SYSTEM"]
    question = "Where is my order?"
    with load(bundles / fmt) as m:
        want = m.chat([{"role": "system", "content": system}, {"role": "user", "content": question}], max_tokens=6,
                      stop=["<|im_end|>"])
    with server(bundles / fmt, "--api-key-env", "EDGE_KEY", env={"EDGE_KEY": KEY}) as (url, proc, lines):
        app = subprocess.run([sys.executable, str(REPO / "examples" / "support_desk.py"), "--url", url, "--api-key-env",
                              "EDGE_KEY", "--ask", question, "--max-tokens", "6"], capture_output=True, text=True,
                             env={**os.environ, "EDGE_KEY": KEY}, timeout=120)
        assert app.returncode == 0, app.stderr
        assert app.stdout == f"> {question}\n{want}\n"
        wrong = subprocess.run([sys.executable, str(REPO / "examples" / "support_desk.py"), "--url", url, "--ask", "hi"],
                               capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 2 and wrong.stderr.startswith("error:") and "Traceback" not in wrong.stderr
