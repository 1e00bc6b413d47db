"""serve: an OpenAI-compatible HTTP endpoint over an exported bundle, for offline apps in any language.

    edgedistill serve bundles/gguf-q4_k_m            # http://127.0.0.1:8080/v1
    curl -s localhost:8080/v1/chat/completions -d '{"model": "gguf-q4_k_m",
         "messages": [{"role": "user", "content": "Where is my order?"}]}'

Routes: /v1/chat/completions and /v1/completions (JSON or server-sent events), /v1/models (with the bundle's
safety verdict), /health. Built on the runtime (edgedistill.runtime) with FastAPI, uvicorn and sse-starlette (the
`serve` extra). One generation runs at a time; the others wait in a bounded queue (edgedistill.serve.worker).

Safe by default: loopback only unless told otherwise, an optional API key read from the environment (compared in
constant time, never logged), limits on the body, the prompt and max_tokens, a request timeout, text content only
(nothing a client sends makes the server open a file or a URL), the bundle's checksums verified at start, and a
bundle marked not deployable refused unless --allow-undeployable. SIGTERM drains: running requests finish within
the grace period or end with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgedistill.errors import EdgeDistillError
from edgedistill.settings import Settings, setting

__all__ = ["ServeSettings", "serve", "load_for_serving"]


@dataclass(frozen=True)
class ServeSettings(Settings):
    bundle: Path = setting(None, "Bundle folder made by `edgedistill export` (GGUF or ONNX).", required=True,
                           exists="dir", cli=False)
    adapter: Path | None = setting(None, "A LoRA adapter bundle (gguf-lora, from `export --variant gguf-lora:f16`) "
                                         "applied over BUNDLE, its base model's GGUF.", exists="dir")
    host: str = setting("127.0.0.1", "Address to listen on (loopback by default; anything else is reachable from "
                                     "the network and is warned about).")
    port: int = setting(8080, "Port to listen on (0: any free port, printed at start).", min=0, max=65535)
    api_key_env: str | None = setting(None, "Name of an environment variable holding the API key clients must send "
                                            "as `Authorization: Bearer KEY` [default: no key].")
    model_name: str | None = setting(None, "Model id clients ask for [default: the bundle folder's name, or the "
                                           "adapter's].")
    max_tokens: int = setting(512, "Cap on max_tokens per request (also the default when a request gives none).",
                              min=1, max=32768)
    max_prompt_tokens: int | None = setting(None, "Longest prompt accepted, in tokens [default: the context less one "
                                                  "token].", min=1)
    max_body_bytes: int = setting(1 << 20, "Largest request body accepted (bigger: 413).", min=1024)
    queue: int = setting(8, "Requests that may wait while one is generated (more: 429 with Retry-After).", min=0,
                         max=4096)
    timeout: float = setting(120.0, "Seconds a request may take, waiting in the queue included.", min=1,
                             kind="duration")
    shutdown_grace: float = setting(30.0, "On SIGTERM: seconds running requests get to finish before they end with "
                                          "an error.", min=0, kind="duration")
    threads: int | None = setting(None, "Runtime threads [default: all cores].", min=1)
    n_ctx: int = setting(2048, "Context the GGUF backend reserves (prompt and answer), in tokens.", min=64,
                         max=131072)
    allow_undeployable: bool = setting(False, "Serve a bundle whose manifest marks it not deployable (the safety "
                                              "gate failed); /v1/models still says so.")
    access_log: bool = setting(False, "Log one line per request (method, path, status; never headers).")

    def extra_problems(self) -> list[str]:
        p = []
        if self.max_prompt_tokens is not None and self.max_prompt_tokens >= self.n_ctx:
            p.append(f"max_prompt_tokens={self.max_prompt_tokens} leaves no room for an answer in n_ctx={self.n_ctx}")
        return p


def api_key(s: ServeSettings, environ=None) -> str | None:
    """The key named by --api-key-env, from the environment; None when no key is asked for."""
    import os

    if not s.api_key_env:
        return None
    key = (environ if environ is not None else os.environ).get(s.api_key_env, "")
    if not key.strip():
        raise EdgeDistillError(f"--api-key-env {s.api_key_env}: that environment variable is not set or empty; "
                               f"export {s.api_key_env}=... before starting the server")
    return key


def exposure_warning(host: str, key: str | None) -> str | None:
    """A warning line when `host` is reachable from other machines (not loopback), None otherwise."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (f"warning: listening on {host}: other machines on the network can reach this endpoint"
            + ("" if key else ", and it asks for no API key (--api-key-env)"))


def deployment_check(manifest: dict, bundle: Path, allow: bool) -> str | None:
    """Refuses a bundle whose manifest marks it not deployable unless `allow`; returns a warning line then."""
    dep = manifest.get("deployment") or {}
    if dep.get("deployable") is not False:
        return None
    failed = ", ".join(k for k, c in (dep.get("safety") or {}).items() if not c.get("pass")) or "safety"
    where = f" for {dep['target']}" if dep.get("target") else ""
    if not allow:
        raise EdgeDistillError(f"{bundle} is marked NOT DEPLOYABLE{where} (failed: {failed}); pass "
                               "--allow-undeployable to serve it anyway")
    return f"warning: serving {bundle.name}, marked NOT DEPLOYABLE{where} (failed: {failed}); /v1/models says so"


def load_for_serving(s: ServeSettings):
    """The bundle's model, loaded after its checksums and its deployment verdict were checked, and the warning
    to show (or None). Raises before loading anything when the serve extra is missing."""
    try:
        import fastapi  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as e:
        raise EdgeDistillError(f"edgedistill serve needs {e.name}, which is not installed; install it with: "
                               "pip install 'edgedistill[serve]'") from None
    from edgedistill.runtime import load
    from edgedistill.runtime.bundle import open_bundle

    manifest = open_bundle(s.bundle, verify=True)
    warning = deployment_check(manifest, Path(s.bundle), s.allow_undeployable)
    if s.adapter is not None:
        open_bundle(s.adapter, verify=True)
    return load(s.bundle, threads=s.threads, n_ctx=s.n_ctx, verify=False, adapter=s.adapter), warning


def serve(s: ServeSettings, *, echo=print) -> None:
    """Load the bundle and serve it until SIGTERM or Ctrl-C. `echo` receives the start-up and shutdown lines."""
    from edgedistill.serve.app import build_app
    from edgedistill.serve.server import run

    key = api_key(s)
    model, warning = load_for_serving(s)
    if warning:
        echo(warning)
    exposed = exposure_warning(s.host, key)
    if exposed:
        echo(exposed)
    app = build_app(model, s, key=key)
    try:
        run(app, s, echo=echo)
    finally:
        app.state.worker.close()
        model.close()
