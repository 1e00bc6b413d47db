"""Real OpenAI-compatible servers for the engine tests: llama-cpp-python's own server on a GGUF, on 127.0.0.1 and a
free port, started and stopped by the fixture; and two fault injectors in front of or instead of it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


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


@pytest.fixture
def serve():
    """serve(gguf, alias, api_key=None, port=None) -> a started LlamaServer, stopped after the test."""
    started = []

    def start(gguf, alias, **kw):
        s = LlamaServer(gguf, alias, **kw).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


class FailingProxy:
    """Answers the first `failures` POSTs with 500, then forwards everything to `upstream`."""

    def __init__(self, upstream: str, failures: int):
        self.failed, self.failures, self.upstream = 0, failures, upstream.rstrip("/")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self, body: bytes | None):
                req = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), data=body,
                                             method=self.command, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as r:
                    data, status = r.read(), r.status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if proxy.failed < proxy.failures:
                    proxy.failed += 1
                    data = json.dumps({"error": {"message": "injected failure", "type": "server_error"}}).encode()
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
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


@pytest.fixture(scope="session")
def chatty(tmp_path_factory):
    """A tiny model that answers in words and stops, with its F16 GGUF for the server."""
    from edgedistill.formats.gguf import write_gguf
    from edgedistill.models import load_model
    from tests import tiny

    root = tmp_path_factory.mktemp("chatty")
    model_dir = tiny.build_chatty_model_dir(root / "chatty", steps=100)
    model, tok = load_model(str(model_dir))
    gguf = write_gguf(model, tok, root / "chatty-f16.gguf", dtype="f16")
    return model_dir, gguf, (model, tok)
