"""The FastAPI application: routes, limits, the API key, OpenAI-shaped answers and errors.

Every error a client can cause is a JSON body {"error": {"message", "type", "param", "code"}} with a 4xx status,
as the OpenAI API sends them (so its clients raise their usual exceptions); a streamed answer that fails half-way
ends with one such error event instead of [DONE].
"""

from __future__ import annotations

import hmac
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from edgedistill.runtime import SamplingParams
from edgedistill.runtime.constrain import ConstraintError, constraint_for, read_reply
from edgedistill.serve.schemas import ChatRequest, CompletionRequest, parse
from edgedistill.serve.errors import BadRequest, NotFound, PayloadTooLarge, ServeError, Unauthorized
from edgedistill.serve.worker import Worker


def error_body(e: ServeError) -> dict:
    return {"error": {"message": str(e), "type": e.type_, "param": e.param, "code": e.code}}


def error_response(e: ServeError) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    if isinstance(e, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(e), status_code=e.status, headers=headers)


def build_app(model, s, *, key: str | None = None) -> FastAPI:
    """The app serving `model` (a runtime LoadedModel) under the settings `s` (ServeSettings)."""
    model_id = s.model_name or (s.adapter or s.bundle).name  # an adapter names the task it was trained for
    manifest = model.manifest
    worker = Worker(model, s.queue, s.timeout)
    max_prompt = min(s.max_prompt_tokens or model.context_length - 1, model.context_length - 1)
    app = FastAPI(title="edgedistill serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker, app.state.model_id = worker, model_id
    app.state.kind = f"{manifest.get('format')}:{manifest.get('scheme')}"

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):  # unknown route, wrong method
        types = {404: "not_found_error", 405: "invalid_request_error"}
        return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: {e.detail}",
                                       "type": types.get(e.status_code, "invalid_request_error"), "param": None,
                                       "code": None}}, status_code=e.status_code)

    def check_key(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise Unauthorized("missing or wrong API key: send the key as `Authorization: Bearer KEY`")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > s.max_body_bytes:
            raise PayloadTooLarge(f"the body has {int(declared)} bytes; this server accepts at most "
                                  f"{s.max_body_bytes} (--max-body-bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > s.max_body_bytes:
                raise PayloadTooLarge(f"the body is over {s.max_body_bytes} bytes (--max-body-bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    def config(req, prompt_ids: list[int], constraint=None) -> SamplingParams:
        if req.model != model_id:
            raise NotFound(f"model {req.model!r} is not served here; this server serves {model_id!r} "
                           "(GET /v1/models)", param="model")
        if len(prompt_ids) > max_prompt:
            raise BadRequest(f"the prompt has {len(prompt_ids)} tokens; this server accepts at most {max_prompt} "
                             "(--max-prompt-tokens, the context)", param="messages")
        room = model.context_length - len(prompt_ids)
        asked = req.answer_tokens()
        if asked is not None and asked > s.max_tokens:
            raise BadRequest(f"max_tokens={asked} is above this server's cap of {s.max_tokens} (--max-tokens)",
                             param="max_tokens")
        if asked is not None and asked > room:
            raise BadRequest(f"the prompt ({len(prompt_ids)} tokens) and max_tokens={asked} do not fit the "
                             f"context of {model.context_length} tokens; ask for at most {room}",
                             param="max_tokens")
        return SamplingParams(max_tokens=asked or min(s.max_tokens, room),
                                temperature=1.0 if req.temperature is None else req.temperature,
                                top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stop=tuple(req.stop or ()),
                                constraint=constraint)

    def constraint_of(req):
        """The request's structured-output constraint (None: free text); a 400 naming what cannot be enforced."""
        tools = getattr(req, "tools", None) or None
        try:
            c = constraint_for(req.response_format, tools, getattr(req, "tool_choice", None), model.template)
            if c is not None:
                model.check_constraint(c)  # compiled (and cached) now: a grammar that fails is this request's 400
        except ConstraintError as e:
            raise BadRequest(str(e), param="tools" if tools else "response_format") from None
        return c

    def offered(req) -> list[dict] | None:
        """The tools the model is told of: none under tool_choice "none"."""
        tools = getattr(req, "tools", None) or None
        return None if getattr(req, "tool_choice", None) == "none" else tools

    async def prepare(request: Request, cls, prompt_of):
        import anyio

        check_key(request)
        req = parse(cls, await read_body(request))
        constraint = constraint_of(req)
        try:
            prompt = prompt_of(req)
        except ServeError:
            raise
        except Exception as e:  # the bundle's chat template refused the messages (e.g. roles out of order)
            raise BadRequest(f"messages: the model's chat template refused them ({e})", param="messages") from None
        prompt_ids = await anyio.to_thread.run_sync(model.encode, prompt)
        return req, worker.submit(prompt_ids, config(req, prompt_ids, constraint)), constraint

    def usage(done) -> dict:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens}

    def calls_delta(calls: list[dict]) -> list[dict]:
        return [{"index": i, **c} for i, c in enumerate(calls)]

    async def answer(req, job, kind: str, constraint=None):
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict:
            if kind == "chat":
                delta = ({"role": "assistant", "content": ""} if first else {} if text is None else {"content": text})
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        def chunk(choices: list, **extra) -> dict:
            return {"data": json.dumps({"id": rid, "object": obj + (".chunk" if kind == "chat" else ""),
                                        "created": created, "model": model_id, "choices": choices, **extra})}

        tools = offered(req) if kind == "chat" else None
        if not req.stream:
            text = await job.text()
            finish = job.done.finish_reason
            if kind != "chat":
                msg = {"text": text}
            else:
                reply = read_reply(text, finish, constraint, tools) if tools else None
                message = {"role": "assistant", "content": text if reply is None else reply.content}
                if reply is not None and reply.tool_calls:
                    message["tool_calls"], finish = reply.tool_calls, reply.finish_reason
                msg = {"message": message}
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": model_id,
                                 "choices": [{"index": 0, **msg, "logprobs": None, "finish_reason": finish}],
                                 "usage": usage(job.done)})

        async def events():
            try:
                if kind == "chat":
                    yield chunk([choice(None, None, first=True)])
                if tools:  # a call or text: known once the answer is whole, then sent as one delta
                    reply = read_reply(await job.text(), job.done.finish_reason, constraint, tools)
                    delta = ({"tool_calls": calls_delta(reply.tool_calls)} if reply.tool_calls
                             else {"content": reply.content})
                    yield chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
                    yield chunk([choice(None, reply.finish_reason)])
                else:
                    async for piece in job.pieces():
                        yield chunk([choice(piece, None)])
                    yield chunk([choice(None, job.done.finish_reason)])
                if req.stream_options and req.stream_options.include_usage:
                    yield chunk([], usage=usage(job.done))
                yield {"data": "[DONE]"}
            except ServeError as e:  # the client already has a 200: the error goes in the stream, then it ends
                yield {"data": json.dumps(error_body(e))}

        # background: a stream whose client left before its first event stops the generation too
        return EventSourceResponse(events(), ping=15, send_timeout=s.timeout, headers={"Cache-Control": "no-store"},
                                   background=BackgroundTask(job.cancelled.set))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req, job, constraint = await prepare(request, ChatRequest,
                                             lambda r: model.render_chat(r.plain_messages(), offered(r)))
        return await answer(req, job, "chat", constraint)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req, job, constraint = await prepare(request, CompletionRequest, lambda r: r.text())
        return await answer(req, job, "completion", constraint)

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        dep = manifest.get("deployment")
        return {"object": "list", "data": [{
            "id": model_id, "object": "model", "created": int(manifest.get("created_unix") or 0),
            "owned_by": "edgedistill", "format": manifest.get("format"), "scheme": manifest.get("scheme"),
            "context_length": model.context_length, "max_tokens": s.max_tokens,
            "deployable": None if dep is None else dep.get("deployable"), "deployment": dep}]}

    @app.get("/health")
    async def health():
        draining = worker.drain_deadline is not None
        return JSONResponse({"status": "draining" if draining else "ok", "model": model_id,
                             "running_or_waiting": worker.pending, "queue": s.queue, **worker.counts},
                            status_code=503 if draining else 200)

    return app
