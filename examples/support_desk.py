"""An offline support-desk assistant: a command-line chat that streams answers from an exported bundle.

Needs only the runtime extra (no torch, no network):

    python -m venv .rt && .rt/bin/pip install 'edgedistill[runtime]'
    .rt/bin/python examples/support_desk.py build/demo/bundles/gguf-q8_0
    .rt/bin/python examples/support_desk.py BUNDLE --ask "My order NW-1234 is late. What can I do?"

Or against a running `edgedistill serve BUNDLE` (any OpenAI-compatible endpoint; needs the openai package):

    .rt/bin/python examples/support_desk.py --url http://127.0.0.1:8080/v1 --ask "Where is my order?"

Type a question and press Enter; an empty line or Ctrl-D ends the session, /reset forgets the conversation.
"""

from __future__ import annotations

import argparse
import sys
import time

from edgedistill.runtime import BundleError, load

SYSTEM = ("You are the support desk assistant of a company that sells and services workshop equipment. "
          "Answer briefly and concretely. If you do not know something about a customer's order, say what "
          "information you need.")


class Remote:
    """The chat_stream of a loaded bundle, answered by an OpenAI-compatible endpoint such as `edgedistill serve`."""

    def __init__(self, url: str, key: str | None, model: str | None):
        from openai import OpenAI

        self.client = OpenAI(base_url=url, api_key=key or "none", max_retries=2)
        self.model = model or self.client.models.list().data[0].id
        self.manifest = {"format": "remote", "scheme": self.model}

    def chat_stream(self, messages, *, max_tokens, temperature, top_p, seed, stop):
        stream = self.client.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                     max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                                     seed=seed, stop=stop)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.client.close()


def answer(model, history: list[dict], question: str, args) -> str:
    history.append({"role": "user", "content": question})
    messages = [{"role": "system", "content": SYSTEM}, *history[-2 * args.keep_turns - 1:]]
    pieces, start, first = [], time.perf_counter(), None
    for piece in model.chat_stream(messages, max_tokens=args.max_tokens, temperature=args.temperature,
                                   top_p=args.top_p, seed=args.seed, stop=["<|im_end|>"]):
        if first is None:
            first = time.perf_counter() - start
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    text = "".join(pieces)
    history.append({"role": "assistant", "content": text})
    if args.timing and first is not None:
        print(f"\n[first piece after {1000 * first:.0f} ms, {time.perf_counter() - start:.1f} s in all]", end="")
    print()
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Offline support-desk assistant over an edgedistill bundle.")
    ap.add_argument("bundle", nargs="?", help="folder made by `edgedistill export` (GGUF or ONNX)")
    ap.add_argument("--url", help="ask a running endpoint instead (e.g. http://127.0.0.1:8080/v1 from `edgedistill "
                                  "serve`)")
    ap.add_argument("--model", help="with --url: the model id [default: the first the endpoint lists]")
    ap.add_argument("--api-key-env", help="with --url: environment variable holding the endpoint's API key")
    ap.add_argument("--ask", action="append", default=[], help="answer this question and exit (repeatable: one "
                                                                 "conversation)")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep-turns", type=int, default=3, help="earlier exchanges kept in the prompt")
    ap.add_argument("--timing", action="store_true", help="print time to first piece after each answer")
    args = ap.parse_args(argv)
    if (args.bundle is None) == (args.url is None):
        ap.error("give a bundle folder or --url, not both")
    try:
        if args.url:
            import os

            import openai

            try:
                model = Remote(args.url, os.environ.get(args.api_key_env or "", ""), args.model)
            except openai.APIError as e:
                raise BundleError(f"{args.url}: {getattr(e, 'message', e)}") from None
        else:
            model = load(args.bundle, threads=args.threads)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    history: list[dict] = []
    with model:
        if args.ask:
            for q in args.ask:
                print(f"> {q}")
                answer(model, history, q, args)
            return 0
        print(f"support desk ({model.manifest['format']}:{model.manifest['scheme']}); empty line to quit")
        while True:
            try:
                q = input("> ").strip()
            except EOFError:
                print()
                return 0
            if not q:
                return 0
            if q == "/reset":
                history.clear()
                continue
            answer(model, history, q, args)


if __name__ == "__main__":
    sys.exit(main())
