"""The openai engine: any OpenAI-compatible server, through the official openai client: `/v1/chat/completions`
(instruct models), or `/v1/completions` on a prompt rendered here (base models; `completion_prompt`). The
completions API is also how a server scores given text (`score_texts`: echo with log-probabilities, where the
server returns them for the prompt), the teacher's likelihood of a student's answers.

Requests run concurrently (at most `concurrency` at once) with a timeout each; the client retries with backoff
on 408/409/429/5xx and lost connections (`retries` times, honouring Retry-After). The API key is read from the
environment variable the user names and is never logged or written. Log-probabilities come back as text pieces:
`align` maps them onto a local tokenizer's ids exactly, or refuses with both tokenizations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

from edgedistill.engines import Answer, Engine, EngineError, EngineSpec, register

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20  # what OpenAI's API and most servers allow


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id of a transformers tokenizer stands for (byte-level BPE or SentencePiece pieces)."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    try:
        decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    except (AttributeError, ValueError):
        decoder = {}
    kinds = {d.get("type") for d in decoder.get("decoders", [decoder])}
    special = set(tokenizer.all_special_tokens)
    if "ByteLevel" in kinds:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        back = {c: b for b, c in bytes_to_unicode().items()}
        return [t.encode() if t in special else bytes(back.get(c, 0) for c in t) for t in vocab]
    out = []
    for t in vocab:
        if t.startswith("<0x") and t.endswith(">") and len(t) == 6:
            out.append(bytes([int(t[3:5], 16)]))
        else:
            out.append(t.replace("\u2581", " ").encode())
    return out


def _norm(b: bytes) -> bytes:
    """What a server that sends text (not bytes) shows of a piece: incomplete UTF-8 dropped."""
    return b.decode("utf-8", errors="ignore").encode()


class Aligner:
    """Maps a server's pieces (text or bytes) onto a local tokenizer's ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pieces = token_bytes(tokenizer)
        seen: dict[bytes, int] = {}
        dup = set()
        for i, b in enumerate(self.pieces):
            k = _norm(b)
            if k in seen:
                dup.add(k)
            seen[k] = i
        self.ids = {k: v for k, v in seen.items() if k not in dup and k}  # pieces that name one id
        self.known = set(seen)  # every piece of this tokenizer

    def align(self, text: str, content: list):
        """(ids, top ids, top log-probs) for a response `text` whose pieces and top alternatives the server sent
        as `content` (chat logprobs.content); alternatives that map to no single local id go to the tail. None
        when the server's tokens are this tokenizer's but not its canonical encoding of the text (a model may
        write " dry" + "er" where encoding gives " dryer"): training encodes the text, so that answer keeps its
        text alone. A piece this tokenizer does not have: another tokenizer, refused with both tokenizations."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        mine = [_norm(self.pieces[i]) for i in ids]
        theirs = [_norm(bytes(c.bytes)) if c.bytes else c.token.encode() for c in content]
        if mine != theirs:
            if all(not p or p in self.known for p in theirs) and b"".join(theirs) == b"".join(mine):
                return None
            n = next((j for j, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            show = lambda xs: [x.decode(errors="replace") for x in xs[max(0, n - 2) : n + 4]]  # noqa: E731
            raise EngineError(
                f"the served tokens are not this tokenizer's ({self.tokenizer.name_or_path}): from token {n} the "
                f"server has {show(theirs)}, the tokenizer {show(mine)} ({len(theirs)} vs {len(ids)} tokens); use "
                "the student's own tokenizer's teacher, or --sequence-level-fallback to keep the text alone")
        top_ids, top_lp = [], []
        for c in content:
            row = {}
            for alt in c.top_logprobs or []:
                key = _norm(bytes(alt.bytes)) if alt.bytes else alt.token.encode()
                j = self.ids.get(key)
                if j is not None and j not in row:
                    row[j] = float(alt.logprob)
            top_ids.append(list(row))
            top_lp.append(list(row.values()))
        return ids, top_ids, top_lp


class _Piece:
    """A completions-API token in the shape of a chat-API logprobs entry (what `Aligner.align` reads)."""

    bytes = None

    def __init__(self, token: str, logprob: float | None = None, top: dict | None = None):
        self.token, self.logprob = token, logprob
        self.top_logprobs = [_Piece(t, lp) for t, lp in (top or {}).items()]


def completion_prompt(tokenizer, messages) -> str:
    """The text sent to /v1/completions for `messages`: rendered with the tokenizer's chat template when it has one,
    else the contents joined by newlines (as the runtime renders for a base model). A tokenizer that adds BOS
    itself when encoding has it added by the server too (a GGUF keeps that setting): its BOS text is left out."""
    from edgedistill.runtime.text import render

    if tokenizer is None:
        return render(None, list(messages), {})
    from edgedistill.models.generate import prompt_text

    text = prompt_text(tokenizer, list(messages))
    bos = getattr(tokenizer, "bos_token", None)
    adds = bos and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds and text.startswith(bos) else text


def _strip_rows(tokenizer, text: str, ids, top_ids, top_lp):
    """The rows of the stripped text (what the record keeps), or None when stripping changes its tokens."""
    stripped = text.strip()
    if stripped == text:
        return ids, top_ids, top_lp
    s_ids = tokenizer(stripped, add_special_tokens=False).input_ids
    lead = len(tokenizer(text[: len(text) - len(text.lstrip())], add_special_tokens=False).input_ids) if text[:1].isspace() else 0
    if ids[lead : lead + len(s_ids)] != s_ids:
        return None
    end = lead + len(s_ids)
    return s_ids, top_ids[lead:end], top_lp[lead:end]


class _TimedOut(Exception):
    """A request that got no answer within the timeout (the server may still be working on it)."""


def _retry_after(response) -> float | None:
    """Seconds to wait that a 429/503 response asks for (Retry-After in seconds; a date is left to the backoff)."""
    try:
        return float(response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


@register("openai")
class OpenAIEngine(Engine):
    client: object = None
    aligner: Aligner | None = None

    @classmethod
    def open(cls, spec: EngineSpec, *, loaded=None) -> OpenAIEngine:
        import openai

        if not spec.url or not spec.served_model:
            raise EngineError("--teacher-engine openai needs --teacher-url (e.g. http://127.0.0.1:8080/v1) and "
                              "--teacher-model (the served model's name)")
        key = "none"  # servers without keys still want the header
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise EngineError(f"--api-key-env {spec.api_key_env}: that environment variable is not set")
        teacher_id, fp, settings = cls.identity(spec)
        e = cls(spec, teacher_id=teacher_id, fingerprint=fp, settings=settings)
        e.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "reported_models": [],
                   "rate_limited": 0, "malformed": 0, "timeouts": 0}
        e._lock = threading.Lock()
        # retries are this engine's own (_request): a timeout is not sent again while the server may still be working
        # on it; fewer requests go at once instead (_concurrently)
        e.client = openai.OpenAI(base_url=spec.url, api_key=key, timeout=spec.timeout_s, max_retries=0)
        e.limit = spec.concurrency
        e._probe()
        slots = e._slots(key)
        if slots and slots < e.limit:
            log.info("%s has %d slots: at most %d requests at once", spec.url, slots, slots)
            e.limit = slots
        if spec.tokenizer:
            from edgedistill.models.locate import load_tokenizer

            e.tokenizer = loaded[1] if loaded else load_tokenizer(spec.tokenizer)
            e.aligner = Aligner(e.tokenizer)
        return e

    @classmethod
    def identity(cls, spec: EngineSpec) -> tuple[str, str, dict]:
        """The served model's name is its identity (the URL may move: a rerun against a restarted server on
        another port continues the same data)."""
        recorded = {"engine": cls.name, **({"extra_body": spec.extra_body} if spec.extra_body else {})}
        key = f"openai:{spec.served_model}"
        if spec.api != "chat":  # another API asks the model another way: its answers are other data
            recorded["api"] = spec.api
            key += f":{spec.api}"
        return spec.served_model, hashlib.sha256(key.encode()).hexdigest()[:16], recorded

    def _fail(self, err) -> EngineError:
        import openai

        url = self.spec.url
        if isinstance(err, openai.AuthenticationError):
            how = f"set {self.spec.api_key_env} to a valid key" if self.spec.api_key_env else "pass --api-key-env VAR"
            return EngineError(f"{url} refused the API key (401): {how}")
        if isinstance(err, openai.PermissionDeniedError):
            return EngineError(f"{url} denied access (403) to model {self.spec.served_model!r}")
        if isinstance(err, openai.APITimeoutError):
            return EngineError(f"{url} did not answer within {self.spec.timeout_s:g} s ({self.spec.retries} retries); "
                               "raise --teacher-timeout or check the server")
        if isinstance(err, openai.APIConnectionError):
            return EngineError(f"cannot reach the teacher server at {url} (after {self.spec.retries} retries): is it "
                               "running? Rerun to continue where this run stopped")
        if isinstance(err, openai.APIStatusError):
            msg = str(getattr(err, "message", err)).splitlines()[0][:200]
            return EngineError(f"{url} answered {err.status_code}: {msg}")
        return EngineError(f"{url}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")

    def _probe(self) -> None:
        """One cheap request before any work: the URL answers, the key is accepted, the model is served."""
        import openai

        try:
            names = [m.id for m in self.client.with_options(max_retries=self.spec.retries).models.list()]
        except openai.NotFoundError:
            return  # some servers have no /models route; the first completion tells
        except openai.OpenAIError as err:
            raise self._fail(err) from None
        if names and self.spec.served_model not in names:
            raise EngineError(f"{self.spec.url} serves {', '.join(names[:8])}, not {self.spec.served_model!r}: "
                              "fix --teacher-model")

    def _slots(self, key: str) -> int | None:
        """How many requests the server works on at once, where it says (llama.cpp's llama-server: /props
        total_slots); None otherwise. More in flight would only queue there, past the timeout."""
        import httpx

        root = self.spec.url.rstrip("/").removesuffix("/v1")
        try:
            r = httpx.get(root + "/props", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            n = r.json().get("total_slots") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return n if isinstance(n, int) and n > 0 else None

    def _request(self, call, adapt: bool = False, **kw):
        """One request through `call` (the client's chat or completions create), counted in `usage`; None when
        the prompt is too long for the server's context. Lost connections, 408/409/429/5xx and bodies cut short are
        asked again (`retries` times, waiting as Retry-After says, else backing off). A timeout: with `adapt`,
        _TimedOut for `_concurrently` to decide (fewer requests at once), never sent again at once; else asked
        again like a lost connection."""
        import time

        import openai

        if self.spec.extra_body:
            kw.update(extra_body=self.spec.extra_body)
        for attempt in range(self.spec.retries + 1):
            last = attempt == self.spec.retries
            wait = min(8.0, 0.5 * 2 ** attempt)
            try:
                r = call(model=self.spec.served_model, **kw)
                break
            except (json.JSONDecodeError, openai.APIResponseValidationError) as err:  # a body cut short or mangled
                with self._lock:
                    self.usage["malformed"] += 1
                if last:
                    raise EngineError(f"{self.spec.url} answered with a body that is not a complete response "
                                      f"({self.spec.retries} retries; {type(err).__name__}): check the server or a "
                                      "proxy in between, then rerun to continue") from None
            except openai.APITimeoutError as err:
                if adapt:
                    raise _TimedOut from None
                if last:
                    raise self._fail(err) from None
            except openai.BadRequestError as err:
                msg = str(getattr(err, "message", err)).lower()
                if any(w in msg for w in ("context", "too long", "exceed", "maximum")):
                    return None
                raise self._fail(err) from None
            except openai.APIConnectionError as err:
                if last:
                    raise self._fail(err) from None
            except openai.APIStatusError as err:
                status = err.status_code
                if last or not (status in (408, 409, 429) or status >= 500):
                    raise self._fail(err) from None
                if status in (429, 503):
                    with self._lock:
                        self.usage["rate_limited"] += 1
                wait = _retry_after(err.response) or wait
            except openai.OpenAIError as err:
                raise self._fail(err) from None
            time.sleep(min(wait, 120.0))
        with self._lock:  # what the user pays: requests answered, prompt and completion tokens
            self.usage["requests"] += 1
            if r.model and r.model not in self.usage["reported_models"]:  # the model id the server says answered
                self.usage["reported_models"].append(r.model)
            if r.usage:
                self.usage["prompt_tokens"] += r.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += r.usage.completion_tokens or 0
        return r

    def _one(self, i: int, messages, gen, logprobs: int) -> Answer:
        kw = dict(max_tokens=gen.max_new_tokens)
        if gen.sample:
            kw.update(temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed + i)
        else:
            kw.update(temperature=0.0)
        chat = self.spec.api == "chat"
        if chat:
            if logprobs:
                kw.update(logprobs=True, top_logprobs=logprobs)
            r = self._request(self.client.chat.completions.create, adapt=True, messages=list(messages), **kw)
        else:
            if logprobs:
                kw.update(logprobs=logprobs)
            r = self._request(self.client.completions.create, adapt=True,
                              prompt=completion_prompt(self.tokenizer, messages), **kw)
        if r is None:
            return Answer(i, None, 0, "prompt_too_long")
        choice = r.choices[0]
        raw = (choice.message.content if chat else choice.text) or ""
        finish = "length" if choice.finish_reason == "length" else "stop"
        n = r.usage.completion_tokens if r.usage else 0
        a = Answer(i, raw.strip(), n, finish, model=r.model or None)
        content = None
        if logprobs and choice.logprobs:
            if chat:
                content = choice.logprobs.content
            elif choice.logprobs.tokens:
                lp = choice.logprobs
                content = [_Piece(t, None, top) for t, top in zip(lp.tokens, lp.top_logprobs or [None] * len(lp.tokens))]
        if logprobs and content is None:
            self.no_logprobs += 1
        if content and self.aligner is None:  # no tokenizer to align to: the pieces as the server gave them
            as_bytes = lambda c: bytes(c.bytes) if c.bytes else c.token.encode()  # noqa: E731
            a.topk_text = ([as_bytes(c) for c in content],
                           [[(as_bytes(alt), float(alt.logprob)) for alt in (c.top_logprobs or [])] for c in content])
        if content and self.aligner is not None:
            try:
                aligned = self.aligner.align(raw, content)
                rows = None if aligned is None else _strip_rows(self.tokenizer, raw, *aligned)
            except EngineError:
                if not self.spec.sequence_level_fallback:
                    raise
                rows = None
            if rows is None:
                self.unaligned += 1
            else:
                a.tokens, a.topk_ids, a.topk_logprobs = rows
                a.tokens = list(a.tokens)
        return a

    def _echo(self, text: str) -> tuple[list, list]:
        """The server's tokens of `text` and their log-probabilities, echoed by /v1/completions (the one token it
        generates left out)."""
        r = self._request(self.client.completions.create, prompt=text, echo=True, logprobs=1, max_tokens=1,
                          temperature=0.0)
        lp = r.choices[0].logprobs if r is not None and r.choices else None
        if lp is None or not lp.tokens or not lp.token_logprobs:
            raise EngineError(f"{self.spec.url} returns no log-probabilities for a prompt (echo with logprobs on "
                              "/v1/completions): the teacher's likelihood of the student's answers is left out")
        made = r.usage.completion_tokens if r.usage and r.usage.completion_tokens is not None else 1
        n = len(lp.tokens) - made
        return list(lp.tokens[:n]), list(lp.token_logprobs[:n])

    def score_texts(self, items, prompts: dict | None = None) -> dict:
        """id -> (the teacher's NLL of the answer, the answer's UTF-8 bytes) for items (id, messages, answer), scored
        by the server: the prompt (`completion_prompt`) followed by the answer, echoed with log-probabilities by
        /v1/completions. The answer's tokens are those after the prompt's own (echoed alone once; `prompts` keeps
        them across calls): servers differ in how they show special tokens and split characters, the count does
        not. An answer whose first token merges with the prompt's last is left out and counted in `unscored`, as
        are empty answers. Raises EngineError when the server returns no log-probabilities for a prompt (many
        vendor APIs do not)."""
        out = {}
        prompts = {} if prompts is None else prompts
        self.unscored = 0
        for rid, messages, answer in items:
            prompt = completion_prompt(self.tokenizer, messages)
            if not answer:
                self.unscored += 1
                continue
            if prompt not in prompts:
                prompts[prompt] = self._echo(prompt)[0]
            head = prompts[prompt]
            toks, lps = self._echo(prompt + answer)
            tail = lps[len(head):]
            if toks[: len(head)] != head or not tail or any(x is None for x in tail):
                self.unscored += 1
                continue
            out[rid] = (-float(sum(tail)), len(answer.encode()))
        return out

    def answer(self, conversations, gen, *, logprobs=0, max_prompt_tokens=None):
        if logprobs > MAX_TOP_LOGPROBS:
            raise EngineError(f"--logprobs {logprobs}: OpenAI-compatible servers give at most {MAX_TOP_LOGPROBS}")
        self.no_logprobs = self.unaligned = 0
        yield from self._concurrently(lambda i: self._one(i, conversations[i], gen, logprobs), len(conversations))
        if self.no_logprobs:
            log.warning("%s sent no log-probabilities for %d answers: those keep the text alone", self.spec.url,
                        self.no_logprobs)
        if self.unaligned:
            log.warning("%d answers keep the text alone: their tokens are not the tokenizer's encoding of their text",
                        self.unaligned)

    def _concurrently(self, fn, n: int):
        """fn(0) ... fn(n - 1), at most `limit` at once, each result yielded as it finishes; the first failure stops
        the run (what finished before it was yielded). A timed-out request halves `limit` and is asked again later
        (the server answers fewer in time than were sent: the rest queued there), at one at a time it is asked
        `retries` times more before the run stops. The workers are daemon threads that nothing waits for: Ctrl-C or an
        error stops the command at once, not after the requests in flight have run out."""
        import queue

        todo, results, stop = queue.SimpleQueue(), queue.SimpleQueue(), threading.Event()
        turn = threading.Condition()
        state = {"running": 0}
        for i in range(n):
            todo.put(i)

        def work() -> None:
            while not stop.is_set():
                with turn:
                    while state["running"] >= self.limit and not stop.is_set():
                        turn.wait(0.2)
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    state["running"] += 1
                try:
                    results.put((i, fn(i), None))
                except BaseException as err:  # handed to the caller's thread, which raises it (or asks again)
                    results.put((i, None, err))
                finally:
                    with turn:
                        state["running"] -= 1
                        turn.notify_all()

        workers = [threading.Thread(target=work, daemon=True, name="edgedistill-request")
                   for _ in range(min(self.spec.concurrency, n))]
        for w in workers:
            w.start()
        timed_out_alone: dict[int, int] = {}
        try:
            left = n
            while left:
                try:
                    i, result, err = results.get(timeout=0.2)  # short waits: Ctrl-C is seen at once
                except queue.Empty:
                    if not any(w.is_alive() for w in workers):  # every worker left early (an item put back late)
                        workers = [threading.Thread(target=work, daemon=True, name="edgedistill-request")]
                        workers[0].start()
                    continue
                if isinstance(err, _TimedOut):
                    with self._lock:
                        self.usage["timeouts"] += 1
                    with turn:
                        if self.limit > 1:
                            self.limit = max(1, self.limit // 2)
                            log.warning("%s did not answer within %g s with more requests in flight: %d at once from "
                                        "now on", self.spec.url, self.spec.timeout_s, self.limit)
                        else:
                            timed_out_alone[i] = timed_out_alone.get(i, 0) + 1
                            if timed_out_alone[i] > self.spec.retries:
                                raise EngineError(f"{self.spec.url} did not answer within {self.spec.timeout_s:g} s, "
                                                  f"one request at a time ({self.spec.retries} retries); raise "
                                                  "--teacher-timeout or check the server")
                        todo.put(i)
                        turn.notify_all()
                    continue
                if err is not None:
                    raise err
                left -= 1
                yield result
        finally:
            stop.set()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class TextScorer:
    """The served teacher's likelihood of given answers (`OpenAIEngine.score_texts`) for distill's validation and
    the bench: the server is opened per call; one that returns no prompt log-probabilities is said once and not
    asked again (the measure is left out). `usage`: the requests this made, what the user pays."""

    def __init__(self, spec: EngineSpec, say=None):
        self.spec, self.say = spec, say or log.warning
        self.usage: dict = {}
        self.prompts: dict = {}  # prompt text -> the server's tokens of it (asked once)
        self.refused: str | None = None
        if spec.api == "chat" and not spec.tokenizer:
            self.refused = ("the served teacher's likelihood of the student's answers is left out: scoring renders the "
                            "prompt as its chat template would, so pass --tokenizer naming the teacher's tokenizer "
                            "(or --teacher-api completions for a base model)")
        self._said = False

    def __call__(self, items) -> dict | None:
        if self.refused is not None:
            if not self._said:
                self._said = True
                self.say(self.refused)
            return None
        from edgedistill.engines import open_engine

        e = open_engine(self.spec)
        try:
            got = e.score_texts(items, self.prompts)
            if e.unscored:
                self.say(f"the teacher's likelihood left out {e.unscored} of {len(items)} answers (empty, or their "
                         "tokens merged across the prompt)")
            return got
        except EngineError as err:
            self.refused, self._said = str(err), True
            self.say(self.refused)
            return None
        finally:
            for k, v in e.usage.items():
                self.usage[k] = sorted(set(self.usage.get(k, [])) | set(v)) if isinstance(v, list) else \
                    self.usage.get(k, 0) + v
            e.close()
