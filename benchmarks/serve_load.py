"""`edgedistill serve` under load: N concurrent clients streaming chats, and a fault run beside them.

For the default teacher's GGUF Q4_K_M bundle and a student's (by default the 10-layer student pruned from the
teacher, `edgedistill prune --layers 10 --hw-friendly`, not distilled: serving speed does not depend on its
training; --student-bundle serves a distilled one instead), a server runs in its own process on 127.0.0.1 and the
official openai client (AsyncOpenAI) streams chats at it:

- load: 1, 4 and 16 clients, each sending --requests chats one after another (support-desk questions, greedy,
  at most --max-tokens tokens), a fixed count per level and at most --max-seconds; throughput (completion tokens /
  wall time), time to first token p50/p95, request latency p50/p95, errors, and the server's peak RSS (sampled
  every 50 ms). Each level is run --repeats times; the figures are medians over the repeats.
- the same chats as one client's through the runtime in the benchmark's process, no server, before the server
  starts: the ratio of served to direct tokens/s at 1 client is what the HTTP layer costs.
- faults: 4 clients as above, while a client disconnects after 3 events (x3), malformed bodies are posted (x10)
  and a slow reader takes one event per 0.5 s; the other clients' errors and TTFT against the same 4-client run
  without faults, and what the server did with each fault.

One generation runs at a time (see edgedistill/serve/worker.py), so throughput stays near one stream's and the
time to first token grows with the queue; the server's queue is set to hold every client (--queue 32).

    .venv/bin/python benchmarks/serve_load.py          # results/serve/serve_load.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEACHER = "smollm2-135m-instruct"
QUESTIONS = [
    "My order NW-1234 is late. What can I do?",
    "How do I return a drill press that arrived damaged?",
    "What is the warranty on the bench grinder?",
    "Can I change the delivery address of order NW-2210?",
    "The band saw blade keeps slipping. What should I check?",
    "Do you ship spare parts abroad?",
    "How long does a refund take once you receive the item?",
    "Which oil should I use for the air compressor?",
]


def log(msg: str) -> None:
    print(f"[serve_load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[i]


class Server:
    """`edgedistill serve` in a subprocess, with its RSS sampled in the background."""

    def __init__(self, bundle: Path, threads: int | None):
        import psutil

        cmd = [sys.executable, "-m", "edgedistill", "serve", str(bundle), "--port", "0", "--queue", "32"]
        if threads:
            cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            raise SystemExit(f"the server did not start: {line!r}")
        self.url = line.split(" on ")[-1].strip()
        self.model = line.split()[1]
        self.ps = psutil.Process(self.proc.pid)
        self.peak, self._stop = 0, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.ps.memory_info().rss)
            except Exception:
                return
            time.sleep(0.05)

    def reset_peak(self) -> None:
        self.peak = self.ps.memory_info().rss

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url.removesuffix("/v1") + "/health").json()

    def stop(self) -> int:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


async def chat(client, model: str, question: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, tokens = None, 0
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except Exception as e:  # counted, not raised: the run goes on
        return {"error": f"{type(e).__name__}: {e}"[:200], "latency_s": time.perf_counter() - t0}
    return {"ttft_s": first, "latency_s": time.perf_counter() - t0, "tokens": tokens}


async def clients_run(url: str, model: str, n: int, requests: int, max_tokens: int, max_seconds: float,
                      faults=None) -> dict:
    import httpx
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600,
                         http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=600))
    deadline = time.perf_counter() + max_seconds
    results: list[dict] = []

    async def one_client(c: int) -> None:
        for r in range(requests):
            if time.perf_counter() > deadline:
                return
            results.append(await chat(client, model, QUESTIONS[(c + r) % len(QUESTIONS)], max_tokens))

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(one_client(c)) for c in range(n)]
    fault_task = asyncio.create_task(faults(url, model)) if faults else None
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    fault_report = await fault_task if fault_task else None
    await client.close()
    ok = [r for r in results if "error" not in r]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    lat = [r["latency_s"] for r in ok]
    out = {"clients": n, "requests": len(results), "planned": n * requests, "errors": len(results) - len(ok),
           "error_samples": [r["error"] for r in results if "error" in r][:3], "wall_s": wall,
           "completion_tokens": sum(r["tokens"] for r in ok),
           "throughput_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
           "ttft_p50_s": quantile(ttft, 0.5), "ttft_p95_s": quantile(ttft, 0.95),
           "latency_p50_s": quantile(lat, 0.5), "latency_p95_s": quantile(lat, 0.95)}
    if fault_report is not None:
        out["faults"] = fault_report
    return out


async def faults(url: str, model: str) -> dict:
    """A client that leaves mid-stream (x3), malformed bodies (x10), a slow reader: what each got."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 64,
            "stream": True, "temperature": 0}
    report = {"disconnects": 0, "malformed_status": [], "slow_reader": None}
    async with httpx.AsyncClient(timeout=600) as h:
        async def disconnect() -> None:
            for _ in range(3):
                async with h.stream("POST", url + "/chat/completions", json=body) as r:
                    n = 0
                    async for line in r.aiter_lines():
                        n += line.startswith("data: ")
                        if n >= 3:
                            break
                report["disconnects"] += 1
                await asyncio.sleep(0.5)

        async def malformed() -> None:
            for i in range(10):
                content = [b"{not json", b"[1, 2, 3]", b'{"model": 5}', b"\xff\xfe", b""][i % 5]
                r = await h.post(url + "/chat/completions", content=content,
                                 headers={"Content-Type": "application/json"})
                report["malformed_status"].append(r.status_code)
                await asyncio.sleep(0.2)

        async def slow_reader() -> None:
            t0, events, done = time.perf_counter(), 0, False
            async with h.stream("POST", url + "/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events += 1
                        done = done or line == "data: [DONE]"
                        await asyncio.sleep(0.5)
            report["slow_reader"] = {"events": events, "finished": done, "seconds": time.perf_counter() - t0}

        await asyncio.gather(disconnect(), malformed(), slow_reader())
    return report


def direct(bundle: Path, requests: int, max_tokens: int, threads: int | None) -> dict:
    """The same chats as one client's, through the runtime in this process (no server): what serving costs."""
    from edgedistill.runtime import Completion, SamplingParams, load

    runs = []
    with load(bundle, threads=threads) as m:
        cfg = SamplingParams(max_tokens=max_tokens)
        for r in range(requests + 1):  # the first is a warm-up
            ids = m.encode(m.render_chat([{"role": "user", "content": QUESTIONS[r % len(QUESTIONS)]}]))
            done, first, t0 = Completion(), None, time.perf_counter()
            for _ in m.stream_ids(ids, cfg, done):
                first = first if first is not None else time.perf_counter() - t0
            runs.append({"ttft_s": first, "latency_s": time.perf_counter() - t0, "tokens": done.completion_tokens})
    runs = runs[1:]
    return {"requests": len(runs), "tokens_per_s": sum(r["tokens"] for r in runs) / sum(r["latency_s"] for r in runs),
            "ttft_p50_s": quantile([r["ttft_s"] for r in runs if r["ttft_s"] is not None], 0.5)}


def prepare(work: Path, student_bundle: Path | None) -> dict[str, Path]:
    from edgedistill.export.pipeline import ExportSettings, export_model

    bundles = {}
    for name, spec in (("teacher", TEACHER), ("student", None)):
        out = work / f"bundles-{name}"
        if name == "student" and student_bundle is not None:
            bundles[name] = student_bundle
            continue
        if name == "student":
            spec = str(work / "student-10l")
            if not (Path(spec) / "config.json").exists():
                log("pruning the 10-layer student")
                subprocess.run([sys.executable, "-m", "edgedistill", "prune", TEACHER, "--layers", "10",
                                "--hw-friendly", "--out", spec], check=True)
        if not (out / "gguf-q4_k_m" / "manifest.json").exists():
            log(f"exporting the {name} to gguf:q4_k_m")
            # force: the untrained prune may miss Q4_K_M's validation tolerance; its speed is what is measured
            export_model(spec, out, ExportSettings(variants=["gguf:q4_k_m"], force=name == "student"))
        bundles[name] = out / "gguf-q4_k_m"
    return bundles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/serve-load"))
    ap.add_argument("--student-bundle", type=Path, help="a distilled student's bundle [default: the pruned student]")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=3, help="chats per client per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=300, help="per level and repeat: no new request after")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="server runtime threads [default: all cores]")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "serve" / "serve_load.json")
    args = ap.parse_args()
    from edgedistill.runinfo import run_record, write_result

    levels = [int(x) for x in args.clients.split(",")]
    bundles = prepare(args.work, args.student_bundle)
    report = {"benchmark": "serve_load", **run_record(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "bundles": {k: str(v) for k, v in bundles.items()}, "models": {}}
    for name, bundle in bundles.items():
        log(f"the {name} through the runtime, no server")
        alone = direct(bundle, args.requests, args.max_tokens, args.threads)
        log(f"serving the {name}: {bundle}")
        srv = Server(bundle, args.threads)
        asyncio.run(clients_run(srv.url, srv.model, 1, 1, args.max_tokens, 60))  # warm-up, not counted
        rows = {}
        for n in levels:
            runs = []
            for rep in range(args.repeats):
                srv.reset_peak()
                run = asyncio.run(clients_run(srv.url, srv.model, n, args.requests, args.max_tokens,
                                              args.max_seconds))
                run["peak_rss_bytes"] = srv.peak
                runs.append(run)
                log(f"{name} {n} clients, repeat {rep + 1}: {run['throughput_tokens_per_s']:.1f} tok/s, TTFT p50 "
                    f"{run['ttft_p50_s']:.3f} s p95 {run['ttft_p95_s']:.3f} s, errors {run['errors']}")
            rows[str(n)] = {"median": median_of(runs), "runs": runs}
        log(f"{name}: fault run")
        before = srv.health()
        base = [asyncio.run(clients_run(srv.url, srv.model, 4, args.requests, args.max_tokens, args.max_seconds))
                for _ in range(args.repeats)]
        faulty = [asyncio.run(clients_run(srv.url, srv.model, 4, args.requests, args.max_tokens, args.max_seconds,
                                          faults=faults)) for _ in range(args.repeats)]
        after = srv.health()
        fault = {"without_faults": median_of(base), "with_faults": median_of(faulty),
                 "faults": [f["faults"] for f in faulty], "others_errors": sum(f["errors"] for f in faulty),
                 "server_counts_during": {k: after[k] - before[k] for k in ("completed", "cancelled", "rejected",
                                                                            "timed_out", "failed")},
                 "health_after": after["status"]}
        fault["ttft_p50_ratio"] = fault["with_faults"]["ttft_p50_s"] / fault["without_faults"]["ttft_p50_s"]
        code = srv.stop()
        one = rows[str(levels[0])]["median"]
        report["models"][name] = {"bundle": str(bundle), "runtime_alone": alone, "levels": rows, "fault_run": fault,
                                  "served_over_alone_tokens_per_s": one["throughput_tokens_per_s"]
                                  / alone["tokens_per_s"], "exit_code": code}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, report)
    md = markdown(report)
    args.out.with_suffix(".md").write_text(md)
    print(md)


def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys
            if any(r.get(k) is not None for r in runs)}


def markdown(report: dict) -> str:
    md = ["| model | clients | requests | errors | tok/s | TTFT p50 s | TTFT p95 s | latency p95 s | peak RSS MB |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        for n, row in m["levels"].items():
            r = row["median"]
            md.append(f"| {name} | {n} | {r['requests']:.0f} | {sum(x['errors'] for x in row['runs'])} | "
                      f"{r['throughput_tokens_per_s']:.1f} | {r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} | "
                      f"{r['latency_p95_s']:.2f} | {r['peak_rss_bytes'] / 1e6:.0f} |")
    md += ["", "| model | runtime alone, tok/s | served to 1 client, tok/s | ratio |", "|---|---:|---:|---:|"]
    for name, m in report["models"].items():
        one = next(iter(m["levels"].values()))["median"]
        md.append(f"| {name} | {m['runtime_alone']['tokens_per_s']:.1f} | {one['throughput_tokens_per_s']:.1f} | "
                  f"x{m['served_over_alone_tokens_per_s']:.2f} |")
    md += ["", "| model | others' errors | TTFT p50 s without / with faults | malformed bodies got | "
               "disconnects cancelled | slow reader | health after |", "|---|---:|---|---|---:|---|---|"]
    for name, m in report["models"].items():
        f = m["fault_run"]
        statuses = sorted({s for x in f["faults"] for s in x["malformed_status"]})
        slow = f["faults"][-1]["slow_reader"]
        md.append(f"| {name} | {f['others_errors']} | {f['without_faults']['ttft_p50_s']:.3f} / "
                  f"{f['with_faults']['ttft_p50_s']:.3f} (x{f['ttft_p50_ratio']:.2f}) | {statuses} | "
                  f"{f['server_counts_during']['cancelled']} of {sum(x['disconnects'] for x in f['faults'])} | "
                  f"{'finished' if slow['finished'] else 'NOT finished'} in {slow['seconds']:.1f} s | "
                  f"{f['health_after']} |")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
