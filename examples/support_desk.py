"""An offline support-desk assistant: a command-line chat that streams answers from an exported bundle.

Needs only the runtime extra (no torch, no network):

    python -m venv .rt && .rt/bin/pip install 'edgedistill[runtime]'
    .rt/bin/python examples/support_desk.py build/demo/bundles/gguf-q8_0
    .rt/bin/python examples/support_desk.py BUNDLE --ask "My order NW-1234 is late. What can I do?"

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
    ap.add_argument("bundle", help="folder made by `edgedistill export` (GGUF or ONNX)")
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
    try:
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
