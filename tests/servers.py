"""Servers the tests and benchmarks/bad_inputs.py start: llama.cpp's OpenAI-compatible server on a GGUF, and two
fault injectors in front of or instead of it. Plain classes, no pytest: the sweep imports them too."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on one GGUF, serving it under `alias`."""

    def __init__(self, gguf: Path, alias: str, *, api_key: str | None = None, port: int | None = None):
        self.gguf, self.alias, self.api_key = gguf, alias, api_key
        self.port = port or free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> LlamaServer:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "1"]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("llama_cpp.server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)



class FailingProxy:
    """In front of `upstream`: answers the first `failures` POSTs with `status` (and a Retry-After header when
    `retry_after` is given), then cuts the JSON body of the next `truncate` answers short, and reports `model` as
    the answering model id when given; every POST waits `delay` seconds first (a slow server), one at a time with
    `one_slot`; everything else is forwarded as it is."""

    def __init__(self, upstream: str, failures: int = 0, *, status: int = 500, retry_after: str | None = None,
                 truncate: int = 0, model: str | None = None, delay: float = 0, one_slot: bool = False):
        self.failed, self.failures, self.upstream = 0, failures, upstream.rstrip("/")
        self.status, self.retry_after, self.truncate, self.truncated, self.model = status, retry_after, truncate, 0, model
        self.delay, self.posted = delay, threading.Event()
        self.slot = threading.Lock() if one_slot else None  # a server that works on one request at a time
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client left (a command stopped by Ctrl-C)
                    pass

            def _forward(self, body: bytes | None):
                req = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), data=body,
                                             method=self.command, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        data, status = r.read(), r.status
                except urllib.error.HTTPError as e:  # the server's own refusal (a 404 of a route it lacks), as it is
                    self._send(e.code, e.read())
                    return
                if body is not None and proxy.model:
                    answer = json.loads(data)
                    answer["model"] = proxy.model
                    data = json.dumps(answer).encode()
                if body is not None and proxy.truncated < proxy.truncate:
                    proxy.truncated += 1
                    data = data[: len(data) // 2]  # a body cut short, its length said as sent
                self._send(status, data)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.posted.set()
                if proxy.slot is not None:
                    with proxy.slot:
                        self._answer(body)
                else:
                    self._answer(body)

            def _answer(self, body: bytes) -> None:
                if proxy.delay:
                    time.sleep(proxy.delay)
                if proxy.failed < proxy.failures:
                    proxy.failed += 1
                    data = json.dumps({"error": {"message": "injected failure", "type": "server_error"}}).encode()
                    self._send(proxy.status, data, {"Retry-After": proxy.retry_after} if proxy.retry_after else None)
                    return
                self._forward(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HangingServer:
    """Accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.conns = []
        self.alive = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.alive:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def close(self):
        self.alive = False
        for c in self.conns:
            c.close()
        self.sock.close()


def interrupt_once_asked(argv: list[str], proxy: FailingProxy, wait_s: float) -> tuple[int, str, float]:
    """Run `edgedistill ARGV` in a fresh process, send it SIGINT once it has asked `proxy` (within `wait_s`), and
    return its exit code, its stderr and the seconds it took to stop."""
    import signal

    repo = Path(__file__).resolve().parent.parent

    # SIGINT as a terminal delivers it, even where this test run was started in the background (a non-interactive
    # shell starts it with SIGINT ignored, and children inherit that)
    proc = subprocess.Popen([sys.executable, "-m", "edgedistill", *argv], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proxy.posted.wait(wait_s), "the command never asked the server"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
