"""Running the app under uvicorn: our own listening socket (so port 0 works and the real port is printed), and a
drain on SIGTERM / Ctrl-C: new requests get 503, running ones get the grace period, then uvicorn closes."""

from __future__ import annotations

import contextlib
import socket

import uvicorn


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, worker, grace: float, on_ready):
        super().__init__(config)
        self.worker, self.grace, self.on_ready = worker, grace, on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            self.on_ready()

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # uvicorn would re-raise the signal once drained: we exit normally

    def handle_exit(self, sig, frame) -> None:
        self.worker.drain(self.grace)
        super().handle_exit(sig, frame)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6); a one-line error when the address is taken or wrong."""
    from edgedistill.errors import EdgeDistillError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as e:
        raise EdgeDistillError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or "
                               "--host") from None


def run(app, s, *, echo=print) -> None:
    from sse_starlette.sse import AppStatus

    AppStatus.should_exit = False  # sse-starlette's flag is process-wide: a fresh server starts undrained
    # sse-starlette would end every open stream within half a second of SIGTERM, whatever --shutdown-grace says (a
    # race the stream loses on a busy machine): the worker's drain ends them instead, once the grace is spent
    AppStatus.disable_automatic_graceful_drain()
    sock = listen(s.host, s.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    worker = app.state.worker
    config = uvicorn.Config(app, log_level="warning", access_log=s.access_log, lifespan="off", server_header=False,
                            timeout_graceful_shutdown=int(s.shutdown_grace) + 2, timeout_keep_alive=5,
                            limit_concurrency=max(64, 4 * (s.queue + 1)))
    server = _Server(config, worker, s.shutdown_grace,
                     lambda: echo(f"serving {app.state.model_id} ({app.state.kind}) on http://{shown}:{port}/v1"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    c = worker.counts
    echo(f"stopped: {c['completed']} completed, {c['cancelled']} cancelled, {c['rejected']} refused as busy, "
         f"{c['timed_out']} timed out, {c['failed']} failed")
