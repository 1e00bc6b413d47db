"""Teacher engines on the default teacher, measured in one run on the same prompts: how fast each makes teacher
data, how closely their log-probabilities agree, and whether a student cares which engine wrote its data.

  1. throughput: --prompts train prompts per domain answered greedily (--max-new-tokens) by the torch engine
     (float32), the llama.cpp engine on the teacher's F16 and Q8_0 GGUF (with and without the top-20
     log-probabilities of every token), and the openai engine against llama-cpp-python's own server on the F16
     GGUF (127.0.0.1; concurrency 4, the server answers one request at a time); response tokens / wall seconds
     of the `generate` call, the model already loaded and the GGUF already written;
  2. agreement: the torch engine's answers scored teacher-forced by each local engine over the full vocabulary
     (k = V) on --agree-seqs sequences: mean KL(torch || engine) per response token, top-1 agreement; and the
     top-64 caches `cache-logits` writes from each, compared the same way on the k + 1 bins of torch's top 64;
  3. students: the 10-layer K-quant friendly student pruned once, distilled --steps steps (run's settings) from
     the torch engine's data and from the llama.cpp F16 engine's data, seeds 0 and 1 each (the seed noise);
     held-out KL and top-1 against the live teacher on the validation prompts' torch answers.

    .venv/bin/python benchmarks/teacher_engines.py   # writes benchmarks/results/distill/teacher_engines.{json,md}
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgedistill.runinfo import run_record, write_result

HERE = Path(__file__).resolve().parent
TEACHER = "smollm2-135m-instruct"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, threads: int):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "teacher",
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads),
                             "--n_threads_batch", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start")


def throughput(work: Path, prompts, max_new: int, threads: int) -> tuple[list[dict], dict[str, Path]]:
    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.engines import EngineSpec
    from edgedistill.engines.llamacpp import LlamaCppEngine

    ggufs = {}
    for t in ("f16", "q8_0"):  # written once before anything is timed
        e = LlamaCppEngine.open(EngineSpec("llama.cpp", TEACHER, gguf_type=t))
        ggufs[t] = e.gguf
        e.close()
    rows, files = [], {}
    proc, url = start_server(ggufs["f16"], threads)
    try:
        f16 = EngineSpec("llama.cpp", TEACHER, gguf_type="f16", threads=threads)
        served = dict(url=url, served_model="teacher", concurrency=4, extra_body={"repeat_penalty": 1.0})
        cases = [  # (label, engine, top-k kept, sequences decoded together)
            ("torch float32", EngineSpec("torch", TEACHER), 0, 8),
            ("torch float32, one at a time", EngineSpec("torch", TEACHER), 0, 1),
            ("torch float32, 16 together", EngineSpec("torch", TEACHER), 0, 16),
            ("llama.cpp F16", f16, 0, 8),
            ("llama.cpp F16 + top-20", f16, 20, 8),
            ("llama.cpp F16, 16 together", f16, 0, 16),
            ("llama.cpp Q8_0", EngineSpec("llama.cpp", TEACHER, gguf_type="q8_0", threads=threads), 0, 8),
            ("openai -> llama.cpp server F16", EngineSpec("openai", None, **served), 0, 8),
            ("openai -> llama.cpp server F16 + top-20", EngineSpec("openai", None, tokenizer=TEACHER, **served), 20, 8),
        ]
        for label, spec, k, batch in cases:
            gen = DecodeSettings(max_new_tokens=max_new, answer_batch=batch)
            out = work / f"train-{''.join(c if c.isalnum() else '_' for c in label)}.jsonl"
            out.unlink(missing_ok=True)
            log(f"throughput: {label}")
            t0 = time.perf_counter()
            r = generate(TEACHER, prompts, out, gen, engine=spec, logprobs=k)
            wall = time.perf_counter() - t0
            recs = [json.loads(x) for x in out.read_text().splitlines()]
            tokens = sum(x["response_tokens"] for x in recs)
            rows.append({"engine": label, "logprobs": k, "batch": batch if spec.engine != "openai" else None,
                         "concurrency": spec.concurrency if spec.engine == "openai" else None,
                         "answers": r.written, "text_only": r.text_only, "response_tokens": tokens,
                         "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)})
            files[label] = out
            log(f"  {tokens} tokens in {wall:.1f} s: {tokens / wall:.1f} tokens/s")
    finally:
        proc.kill()
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_torch"] = round(r["tokens_per_s"] / base, 2)
    same = {}
    ref = {json.loads(x)["id"]: json.loads(x)["response"] for x in files["torch float32"].read_text().splitlines()}
    for label, f in files.items():
        other = {json.loads(x)["id"]: json.loads(x)["response"] for x in f.read_text().splitlines()}
        same[label] = sum(ref[i] == other.get(i) for i in ref) / len(ref)
    for r in rows:
        r["same_answer_as_torch"] = round(same[r["engine"]], 3)
    return rows, files


def _kl_full(p_lp: np.ndarray, q_lp: np.ndarray) -> np.ndarray:
    p = np.exp(p_lp.astype(np.float64))
    return (p * (p_lp.astype(np.float64) - q_lp.astype(np.float64))).sum(-1)


def agreement(work: Path, torch_file: Path, n_seqs: int, threads: int) -> dict:
    """Full-vocabulary scores (k = V) from each local engine on the same tokens, and the top-64 caches."""
    from edgedistill.distill import logit_cache as lc
    from edgedistill.distill.dataset import encode, load_generations
    from edgedistill.distill.stage import CacheSettings, cache_logits
    from edgedistill.engines import EngineSpec, open_engine

    records = load_generations([torch_file])
    engines = {"torch": EngineSpec("torch", TEACHER),
               "llama.cpp F16": EngineSpec("llama.cpp", TEACHER, gguf_type="f16", threads=threads),
               "llama.cpp Q8_0": EngineSpec("llama.cpp", TEACHER, gguf_type="q8_0", threads=threads)}
    full = {}
    for label, spec in engines.items():
        e = open_engine(spec)
        data = encode(e.tokenizer, records[:n_seqs], 512)
        vocab = getattr(e, "n_vocab", None) or e.model.config.vocab_size
        rows = []
        for ids, lp in e.score(data.examples, vocab, batch_size=2):  # every id, sorted: put back in id order
            dense = np.empty_like(lp)
            np.put_along_axis(dense, ids, lp, -1)
            rows.append(dense)
        full[label] = np.concatenate(rows)
        e.close()
    out = {"sequences": n_seqs, "tokens": int(full["torch"].shape[0]), "full_vocabulary": {}, "top64_cache": {}}
    t = full["torch"]
    for label in ("llama.cpp F16", "llama.cpp Q8_0"):
        kl = _kl_full(t, full[label])
        out["full_vocabulary"][label] = {"mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
                                         "top1_agreement": float((t.argmax(-1) == full[label].argmax(-1)).mean())}
    caches = {}
    for label, spec in engines.items():
        folder = work / f"cache-{label.replace(' ', '_')}"
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        cache_logits(CacheSettings(teacher=TEACHER, generations=[torch_file], out=folder, k=64, max_length=512,
                                   teacher_engine=spec.engine, teacher_gguf_type=spec.gguf_type))
        caches[label] = lc.load_arrays(folder)
    c = caches["torch"]
    p_top = c["logprobs"].astype(np.float64)
    p = np.concatenate([np.exp(p_top), np.clip(1 - np.exp(p_top).sum(-1, keepdims=True), 1e-9, 1)], -1)
    for label in ("llama.cpp F16", "llama.cpp Q8_0"):
        o = caches[label]
        # the other cache's probability of each of torch's top-64 ids (0 where outside its own top 64)
        q_top = np.zeros_like(p_top)
        for n in range(len(c["ids"])):
            where = {int(i): float(v) for i, v in zip(o["ids"][n], o["logprobs"][n])}
            q_top[n] = [np.exp(where[int(i)]) if int(i) in where else 0.0 for i in c["ids"][n]]
        q = np.concatenate([q_top, np.clip(1 - q_top.sum(-1, keepdims=True), 1e-9, 1)], -1)
        q = np.clip(q, 1e-9, 1)
        kl = (p * (np.log(np.clip(p, 1e-12, 1)) - np.log(q))).sum(-1)
        out["top64_cache"][label] = {"tokens": int(len(kl)), "mean_kl_bins": float(kl.mean()),
                                     "top1_agreement": float((c["ids"][:, 0] == o["ids"][:, 0]).mean()),
                                     "shared_top64_ids": float(np.mean([len(set(a) & set(b)) / 64 for a, b in
                                                                        zip(c["ids"], o["ids"])]))}
    return out


def students(work: Path, data: dict[str, Path], validation: Path, steps: int) -> list[dict]:
    from edgedistill.distill.stage import DistillSettings, PruneSettings, distill, prune
    from edgedistill.models import load_model

    teacher = load_model(TEACHER)
    student = work / "student-init"
    if not (student / "config.json").exists():
        log("pruning the 10-layer student")
        prune(PruneSettings(teacher=TEACHER, out=student, layers=10, hw_friendly=True, calibration_tokens=8192),
              teacher=teacher)
    rows = []
    for label, seed in ((label, seed) for seed in (0, 1) for label in ("torch float32", "llama.cpp F16")):
        out = work / f"distill-{label.replace(' ', '_')}-seed{seed}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        log(f"distilling from {label} data, seed {seed}")
        s = DistillSettings(teacher=TEACHER, student=str(student), generations=[data[label]], validation=[validation],
                            out=out, loss="forward_kl", kd_weight=0.5, steps=steps, batch_size=4, grad_accum=2,
                            lr=5e-4, warmup_steps=min(6, steps // 4), seed=seed, save_steps=100_000,
                            keep_checkpoints=False)
        t0 = time.perf_counter()
        r = distill(s, teacher=teacher)
        v = r["validation"]
        rows.append({"data_from": label, "seed": seed, "steps": r["steps"], "train_tokens": r["train_tokens"],
                     "held_out_kl": round(v["mean_kl"], 4), "held_out_top1": round(v["top1_agreement"], 4),
                     "held_out_tokens": v["tokens"], "train_s": round(time.perf_counter() - t0, 1)})
        log(f"  KL {v['mean_kl']:.4f}, top-1 {100 * v['top1_agreement']:.1f}%")
    return rows


def markdown(report: dict) -> str:
    lines = [f"# Teacher engines, default teacher ({report['machine'].get('cpu', '')}, {report['threads']} threads)", "",
             f"{report['prompts']} train prompts, greedy, at most {report['max_new_tokens']} new tokens, one run.", "",
             "| engine | top-k kept | response tokens | wall s | tokens/s | vs torch (8 together) | same answer as torch |",
             "|---|---|---|---|---|---|---|"]
    for r in report["throughput"]:
        kept = f"{r['logprobs']} ({r['text_only']} answers text only)" if r["logprobs"] else "-"
        lines.append(f"| {r['engine']} | {kept} | {r['response_tokens']} | {r['wall_s']} | "
                     f"{r['tokens_per_s']} | x{r['vs_torch']} | {100 * r['same_answer_as_torch']:.0f}% |")
    a = report["agreement"]
    lines += ["", f"Agreement with torch on {a['tokens']} response tokens of {a['sequences']} torch answers:", "",
              "| engine | full-vocabulary KL | max KL | top-1 | top-64 cache KL (k+1 bins) | shared top-64 ids |",
              "|---|---|---|---|---|---|"]
    for label, f in a["full_vocabulary"].items():
        c = a["top64_cache"][label]
        lines.append(f"| {label} | {f['mean_kl']:.2e} | {f['max_kl']:.2e} | {100 * f['top1_agreement']:.1f}% | "
                     f"{c['mean_kl_bins']:.2e} | {100 * c['shared_top64_ids']:.1f}% |")
    lines += ["", "Students (10 layers, pruned once, same budget), held out against the live teacher:", "",
              "| data from | seed | steps | held-out KL | top-1 |", "|---|---|---|---|---|"]
    for r in report["students"]:
        lines.append(f"| {r['data_from']} | {r['seed']} | {r['steps']} | {r['held_out_kl']:.4f} | "
                     f"{100 * r['held_out_top1']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    from edgedistill.data.generate import DecodeSettings, generate
    from edgedistill.data.stage import GenerateSettings, select_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/bench-teacher-engines"))
    ap.add_argument("--prompts", type=int, default=8, help="train prompts per domain")
    ap.add_argument("--val-prompts", type=int, default=4, help="validation prompts per domain")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--agree-seqs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-students", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill" / "teacher_engines.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    train = select_prompts(GenerateSettings(split="train", limit=args.prompts, out=args.work / "x.jsonl", teacher_engine="torch"))
    rows, files = throughput(args.work, train, args.max_new_tokens, args.threads)
    report = {**run_record(), "threads": args.threads, "prompts": len(train), "max_new_tokens": args.max_new_tokens,
              "throughput": rows}
    report["agreement"] = agreement(args.work, files["torch float32"], args.agree_seqs, args.threads)
    if not args.skip_students:
        val = args.work / "validation-torch.jsonl"
        val_prompts = select_prompts(GenerateSettings(split="validation", limit=args.val_prompts, out=val, teacher_engine="torch"))
        log("validation answers (torch)")
        generate(TEACHER, val_prompts, val, DecodeSettings(max_new_tokens=args.max_new_tokens, answer_batch=8))
        report["students"] = students(args.work, files, val, args.steps)
    else:
        report["students"] = []
    write_result(args.out, report)
    from edgedistill.paths import write_text_atomic

    write_text_atomic(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
