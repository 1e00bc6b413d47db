"""A broad bad-input sweep over every command, as a new user would make the mistakes: tried / handled / failed.

Each case runs the real `edgedistill` entry point in a fresh process, in its own process group, with its
temporary folder ($TMPDIR) inside the workspace, on a deliberately broken input (files that are cut, mis-encoded,
absurdly nested, of the wrong kind or from another model, alias bombs, malformed URLs; values out of range or in
the wrong unit; outputs that cannot be written or already exist; bundles that were tampered with) or under a
fault: a full disk (a file-size limit, and a small tmpfs where this runs as root), SIGINT or SIGTERM once a child
process (bench worker, converter, quantizer, ONNX builder) or the server runs, SIGKILL mid-export and a rerun, and a
served teacher (llama.cpp's server on the teacher's GGUF) behind a fault injector: 429 / 503 with Retry-After, a body
cut short once or every time, another model id behind the same name, an answer that takes a minute and a Ctrl-C.
A case is *handled* when the command exits with its expected code (2 for bad input; 130 / 143 after SIGINT /
SIGTERM; 0 for serve's drain), prints exactly one line on stderr starting with "error: " when it fails, shows no
traceback, leaves nothing new in the workspace or its $TMPDIR (no output, no hidden temporary file) and no
process in its group; a case that must succeed through its fault (a rate limit waited out) keeps its output and says
what it met. Anything else is *failed*, by kind: traceback, silent success (exit 0 on bad input),
several lines, other exit code, leftover, process left running.

    .venv/bin/python benchmarks/bad_inputs.py     # writes benchmarks/results/reliability/bad_inputs.json

Uses the default teacher (pulled once into the cache) where a real model is needed; about 10 minutes here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgedistill.children import descendant_with, left_in_group
from edgedistill.runinfo import run_record, write_result

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.servers import FailingProxy, LlamaServer  # noqa: E402  (the tests' servers: one fault injector)


# onnxruntime's own session-id file in $TMPDIR: one fixed name, rewritten in place, not a temporary file of ours
NOT_OURS = {".ses"}


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name not in NOT_OURS}


@dataclass
class Fault:
    """How a case is run beyond its arguments: a file-size limit (bytes), a signal sent once a descendant whose
    command line holds `marker` runs (or a stdout line starting with it, or once `asked` is set: a served teacher got
    a request) and the seconds the command may then take to stop (`stop_within`), for SIGKILL the rerun that must
    succeed, `keep` (a path in the workspace the case may leave), and `check`: given what the command printed,
    what is wrong beyond the exit code (None when nothing)."""

    fsize: int | None = None
    signal: int | None = None
    marker: str = ""
    asked: threading.Event | None = None
    stop_within: float | None = None
    rerun: bool = False
    keep: str = ""
    check: Callable[[str], str | None] | None = None


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 600) -> bool:
    """Until a descendant of `proc` has `marker` in its command line, or `proc` prints a line starting with it."""
    if marker.startswith("stdout:"):
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            if line.startswith(marker[len("stdout:"):]) or time.monotonic() > deadline:
                return True
        return False
    return descendant_with(proc, marker, timeout) is not None


def run_case(argv: list[str], env: dict, fault: Fault | None) -> tuple[subprocess.CompletedProcess, list[int], float]:
    """One run of the CLI in its own process group; returns what it printed, the processes it left behind (killed
    afterwards) and the seconds from the signal to its end (0 without one)."""
    fault = fault or Fault()

    def setup() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, even when this sweep runs in background
        if fault.fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fault.fsize, fault.fsize))

    cmd = [sys.executable, "-m", "edgedistill", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                            preexec_fn=setup)
    stopped = 0.0
    try:
        if fault.signal is not None:
            ready = fault.asked.wait(600) if fault.asked is not None else _wait_for(proc, fault.marker)
            if not ready:
                raise SystemExit(f"{argv}: {fault.marker or 'the request'} never came; the case cannot be tried: "
                                 f"{proc.stderr.read()}")
            sent = time.monotonic()
            proc.send_signal(fault.signal)
        out, err = proc.communicate(timeout=900)
        if fault.signal is not None:
            stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    left = left_in_group(proc.pid, wait_s=5 if fault.signal == signal.SIGKILL else 2)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out or "", err or ""), left, stopped


def build_workspace(w: Path, teacher: Path) -> dict:
    """Every broken input the cases use, made once. Returns name -> path."""
    from edgedistill.models.fingerprint import model_fingerprint

    f: dict[str, Path] = {}

    def file(name: str, data: bytes | str) -> Path:
        p = w / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        f[name] = p
        return p

    def model_copy(name: str, skip=()) -> Path:
        d = w / name
        d.mkdir()
        for src in teacher.iterdir():
            if src.is_dir() or any(src.match(pat) for pat in skip):
                continue
            if src.suffix == ".safetensors":
                os.link(src, d / src.name) if os.stat(src).st_dev == os.stat(w).st_dev else shutil.copy(src, d)
            else:
                shutil.copy(src, d / src.name)
        f[name] = d
        return d

    # models
    (w / "empty-dir").mkdir()
    f["empty-dir"] = w / "empty-dir"
    model_copy("no-tokenizer", skip=("tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt",
                                     "chat_template.jinja"))
    bad_cfg = model_copy("bad-config")
    (bad_cfg / "config.json").write_text("{not json")
    cut = model_copy("cut-weights", skip=("*.safetensors",))
    with open(next(teacher.glob("*.safetensors")), "rb") as src:
        (cut / "model.safetensors").write_bytes(src.read(20_000))
    latin_cfg = model_copy("latin1-config")
    (latin_cfg / "config.json").write_bytes((latin_cfg / "config.json").read_bytes().replace(b"{", b'{"x": "\xe9",', 1))
    file("magic.gguf", b"GGUF")
    file("zeros.gguf", b"\0" * 4096)
    file("text-as-model.safetensors", "hello")
    # prompts and generations
    file("prompts-latin1.jsonl", '{"id": "a", "prompt": "caf\u00e9"}\n'.encode("latin-1"))
    file("prompts-not-json.jsonl", '{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n')
    file("prompts-not-object.jsonl", '["a", "b"]\n')
    file("prompts-no-text.jsonl", '{"id": "a"}\n')
    file("prompts-dup-ids.jsonl", '{"id": "a", "prompt": "hi"}\n{"id": "a", "prompt": "ho"}\n')
    file("prompts-empty.jsonl", "")
    file("prompts-deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    file("prompts-ok.jsonl", '{"id": "a", "prompt": "Where is my order?"}\n')
    rec = {"id": "a", "messages": [{"role": "user", "content": "Where is my order?"}], "response": "On its way.",
           "teacher": "smollm2-135m-instruct", "settings": {"max_new_tokens": 256, "do_sample": False}}
    file("gen-ok.jsonl", json.dumps({**rec, "teacher_fingerprint": model_fingerprint(teacher)}) + "\n")
    file("gen-other-teacher.jsonl", json.dumps({**rec, "teacher_fingerprint": "0123456789abcdef"}) + "\n")
    file("gen-no-response.jsonl", '{"id": "a", "messages": []}\n')
    file("gen-latin1.jsonl", json.dumps(rec, ensure_ascii=False).replace("way", "w\u00e9y").encode("latin-1") + b"\n")
    # YAML: settings files and profiles
    file("deep.yaml", "[" * 20000 + "]" * 20000 + "\n")
    file("malformed.yaml", "a: [1, 2\nb: }\n")
    file("list.yaml", "- 1\n- 2\n")
    file("latin1.yaml", "name: bo\u00eete\n".encode("latin-1"))
    file("unknown-key.yaml", "no_such_setting: 3\n")
    file("wrong-type.yaml", "steps: many\n")
    file("out-of-range.yaml", "steps: -4\nlr: 7\n")
    shipped = REPO / "edgedistill" / "targets" / "profiles" / "laptop.yaml"
    text = shipped.read_text()
    file("profile-bad-unit.yaml", text.replace("memory_budget:", "memory_budget: 12 parsecs #", 1))
    file("profile-missing-key.yaml", "\n".join(ln for ln in text.splitlines() if not ln.startswith("threads")))
    file("profile-wrong-arch.yaml", text.replace("cpu_arch:", "cpu_arch: sparc64 #", 1))
    # caches
    ok_cache = w / "cache-ok"
    proc = subprocess.run([sys.executable, "-m", "edgedistill", "cache-logits", "--teacher-engine", "torch", "--generations", str(f["gen-ok.jsonl"]),
                           "--out", str(ok_cache), "--k", "8"], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"could not build the cache the cases need: {proc.stderr[-500:]}")
    f["cache-ok"] = ok_cache
    cut_cache = w / "cache-cut"
    shutil.copytree(ok_cache, cut_cache)
    t = cut_cache / "shard-00000.safetensors"
    t.write_bytes(t.read_bytes()[: t.stat().st_size // 2])
    f["cache-cut"] = cut_cache
    no_meta = w / "cache-no-meta"
    shutil.copytree(ok_cache, no_meta)
    (no_meta / "cache.json").unlink()
    f["cache-no-meta"] = no_meta
    # bundles
    man = {"manifest_version": 1, "format": "gguf", "scheme": "q8_0", "model_file": "../magic.gguf",
           "files": {"../magic.gguf": {"bytes": 4, "sha256": "x"}}}
    file("bundle-escape/manifest.json", json.dumps(man))
    file("bundle-absolute/manifest.json", json.dumps({**man, "model_file": "/etc/hostname",
                                                      "files": {"/etc/hostname": {"bytes": 1, "sha256": "x"}}}))
    file("bundle-no-version/manifest.json", json.dumps({k: v for k, v in man.items() if k != "manifest_version"}))
    file("bundle-not-json/manifest.json", "{")
    file("bundle-latin1/manifest.json", b'{"x": "\xe9"}')
    file("bundle-missing-file/manifest.json", json.dumps({**man, "model_file": "model.gguf",
                                                          "files": {"model.gguf": {"bytes": 4, "sha256": "x"}}}))
    (w / "bundle-empty").mkdir()
    file("bundle-parent/gguf-q8_0/manifest.json", json.dumps(man))
    for b in w.glob("bundle-*"):
        f[b.name] = b
    # an output place nothing can be written to (a folder path under a plain file: refused for root too)
    file("blocker", "a file, not a folder\n")
    # odd values in files that are otherwise fine
    suite = file("suite-number/safety/test.jsonl", '{"id": "s1", "kind": "harmful", "category": "harassment", '
                 '"messages": [{"role": "user", "content": 5}]}\n')
    f["suite-number"] = suite.parent.parent
    file("gen-number.jsonl", json.dumps({**rec, "messages": [{"role": "user", "content": 5}]}) + "\n")
    file("laughs.yaml", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{q}: &{q} [{', '.join([f'*{p}'] * 9)}]\n" for p, q in zip("abcdefgh", "bcdefghi")) + "name: *i\n")
    file("dup-key.yaml", text + "\nthreads: 3\n")
    (w / "config-only").mkdir()
    shutil.copy(teacher / "config.json", w / "config-only" / "config.json")
    f["config-only"] = w / "config-only"
    file("prompts-2m.jsonl", "".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}: " + "where is it " * 50})
                                     + "\n" for i in range(3000)))
    file("gen-long.jsonl", json.dumps({**rec, "response": "It is on its way, packed and tracked. " * 200,
                                       "teacher_fingerprint": model_fingerprint(teacher)}) + "\n")
    # a real bundle for the signal cases
    proc = subprocess.run([sys.executable, "-m", "edgedistill", "export", str(teacher), "--variant", "gguf:q8_0",
                           "--chunks", "1", "--chunk-len", "32", "--out", str(w / "bundle-ok")], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"could not build the bundle the cases need: {proc.stderr[-500:]}")
    f["bundle-ok"] = w / "bundle-ok" / "gguf-q8_0"
    existing = w / "existing-out"
    existing.mkdir()
    (existing / "keep.txt").write_text("the user's file\n")
    f["existing-out"] = existing
    return f


def start_served(w: Path, f: dict, stack: list) -> dict:
    """llama.cpp's server on the teacher's GGUF (the bundle the signal cases use) and one fault injector per served
    case in front of it (each case meets its fault once); a generations file written through one model id, for
    the case that finds another id behind the same name. Everything started is appended to `stack` (closed last)."""
    bundle = f["bundle-ok"]
    gguf = bundle / json.loads((bundle / "manifest.json").read_text())["model_file"]
    server = LlamaServer(gguf, "teacher").start()
    stack.append(server.stop)

    def proxy(**kw) -> FailingProxy:
        p = FailingProxy(server.url, **kw)
        stack.append(p.close)
        return p

    s = {"429": proxy(failures=2, status=429, retry_after="1"), "503": proxy(failures=2, status=503, retry_after="1"),
         "cut-once": proxy(truncate=1), "cut-always": proxy(truncate=1000), "model-a": proxy(model="teacher-2026-01"),
         "model-b": proxy(model="teacher-2026-06"), "slow": proxy(delay=60)}
    two = w / "prompts-two.jsonl"
    two.write_text('{"id": "a", "prompt": "Where is my order?"}\n{"id": "b", "prompt": "Can I return it?"}\n')
    f["prompts-two.jsonl"] = two
    made = w / "gen-served-a.jsonl"
    proc = subprocess.run([sys.executable, "-m", "edgedistill", "generate", "--teacher-url", s["model-a"].url,
                           "--teacher-model", "teacher", "--prompts", str(f["prompts-ok.jsonl"]), "--out", str(made)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"could not build the served teacher's file the cases need: {proc.stderr[-500:]}")
    f["gen-served-a.jsonl"] = made
    return s


def _records(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _says(text: str, path: Path, records: int) -> Callable[[str], str | None]:
    """A check: the command's output holds `text` and `path` holds `records` records."""
    def check(printed: str) -> str | None:
        if text not in printed:
            return f"does not say {text!r}"
        return None if _records(path) == records else f"{_records(path)} records in its output, not {records}"
    return check


def _unchanged(path: Path) -> Callable[[str], str | None]:
    before = path.read_bytes()
    return lambda printed: None if path.read_bytes() == before else f"{path.name} changed"


USAGE_CASES = {"no such command", "unknown option", "missing argument", "int flag given text", "models ask max tokens 0",
               "choice flag bad", "distill max-time 5 parsecs"}


def cases(f: dict, teacher: Path, tmpfs: Path | None, served: dict) -> list[tuple[str, list[str], int, Fault | None]]:
    """(name, arguments, expected exit code, fault). Only USAGE_CASES may be answered by click's usage check; any
    other case answered so is a broken case (a misspelt flag), not a handled one."""
    T = str(teacher)
    blk = str(f["blocker"])
    ok_gen, ok_p = str(f["gen-ok.jsonl"]), str(f["prompts-ok.jsonl"])
    out = lambda name: str(Path(blk).parent / "outs" / name)  # noqa: E731  (must not exist afterwards)
    c: list[tuple[str, list[str], int, Fault | None]] = []

    def add(name, args, code=2, fault=None):
        c.append((name, [str(a) for a in args], code, fault))

    # click usage
    add("no such command", ["nosuch"])
    add("unknown option", ["distill", "--no-such-flag"])
    add("missing argument", ["models", "ask"])
    add("int flag given text", ["generate", "--split", "train", "--answer-batch", "abc", "--out", out("g")])
    add("choice flag bad", ["generate", "--split", "holdout", "--out", out("g")])
    # models
    for m in ("empty-dir", "no-tokenizer", "bad-config", "cut-weights", "latin1-config", "magic.gguf", "zeros.gguf",
              "text-as-model.safetensors"):
        add(f"models info {m}", ["models", "info", f[m]])
    for m in ("no-tokenizer", "bad-config", "cut-weights", "magic.gguf"):
        add(f"models ask {m}", ["models", "ask", f[m], "hi"])
    add("models ask max tokens 0", ["models", "ask", T, "hi", "--max-new-tokens", "0"])
    add("models pull unknown", ["models", "pull", "no-such-model"])
    add("models info hub id offline", ["models", "info", "org/model"])
    # generate
    for p in ("prompts-latin1.jsonl", "prompts-not-json.jsonl", "prompts-not-object.jsonl", "prompts-no-text.jsonl",
              "prompts-dup-ids.jsonl", "prompts-empty.jsonl", "prompts-deep.jsonl"):
        add(f"generate {p}", ["generate", "--teacher-engine", "torch", "--teacher", T, "--prompts", f[p], "--out", out("g.jsonl")])
    add("generate no prompts nor split", ["generate", "--teacher-engine", "torch", "--teacher", T, "--out", out("g.jsonl")])
    add("generate prompts and split", ["generate", "--prompts", ok_p, "--split", "train", "--out", out("g.jsonl")])
    add("generate temperature 0", ["generate", "--prompts", ok_p, "--sample", "--temperature", "0", "--out", out("g")])
    add("generate no-tokenizer teacher", ["generate", "--teacher-engine", "torch", "--teacher", f["no-tokenizer"], "--prompts", ok_p, "--out",
                                          out("g.jsonl")])
    add("generate into another teacher's file", ["generate", "--teacher-engine", "torch", "--teacher", T, "--prompts", ok_p, "--out",
                                                  f["gen-other-teacher.jsonl"]])
    add("generate --out blocked", ["generate", "--teacher-engine", "torch", "--teacher", T, "--prompts", ok_p, "--out", f"{blk}/g.jsonl"])
    add("generate --config deep", ["generate", "--config", f["deep.yaml"], "--prompts", ok_p, "--out", out("g")])
    # prune
    add("prune no-tokenizer", ["prune", "--teacher", f["no-tokenizer"], "--teacher-width", "--layers", "2", "--out", out("p")])
    add("prune layers 0", ["prune", "--teacher", T, "--teacher-width", "--layers", "0", "--out", out("p")])
    add("prune layers 99", ["prune", "--teacher", T, "--teacher-width", "--layers", "99", "--out", out("p")])
    add("prune into existing", ["prune", "--teacher", T, "--teacher-width", "--layers", "2", "--out", f["existing-out"]])
    add("prune --out blocked", ["prune", "--teacher", T, "--teacher-width", "--layers", "2", "--out", f"{blk}/p"])
    add("prune latin-1 calibration", ["prune", "--teacher", T, "--teacher-width", "--layers", "2", "--calibration", f["prompts-latin1.jsonl"],
                                      "--out", out("p")])
    # cache-logits
    add("cache-logits k 0", ["cache-logits", "--teacher-engine", "torch", "--generations", ok_gen, "--k", "0", "--out", out("c")])
    add("cache-logits into existing", ["cache-logits", "--teacher-engine", "torch", "--generations", ok_gen, "--out", f["existing-out"]])
    add("cache-logits no-response data", ["cache-logits", "--teacher-engine", "torch", "--generations", f["gen-no-response.jsonl"], "--out", out("c")])
    add("cache-logits latin-1 data", ["cache-logits", "--teacher-engine", "torch", "--generations", f["gen-latin1.jsonl"], "--out", out("c")])
    add("cache-logits --out blocked", ["cache-logits", "--teacher-engine", "torch", "--generations", ok_gen, "--out", f"{blk}/c"])
    # distill
    d = ["distill", "--student", T, "--generations", ok_gen]
    add("distill truncated cache", [*d, "--logit-cache", f["cache-cut"], "--out", out("d")])
    add("distill cache without cache.json", [*d, "--logit-cache", f["cache-no-meta"], "--out", out("d")])
    add("distill lr 5", [*d, "--lr", "5", "--out", out("d")])
    add("distill steps -1", [*d, "--steps", "-1", "--out", out("d")])
    add("distill max-time 5 parsecs", [*d, "--max-time", "5parsecs", "--out", out("d")])
    add("distill loss unknown", [*d, "--loss", "cosine", "--out", out("d")])
    add("distill beta without jsd", [*d, "--beta", "0.5", "--out", out("d")])
    add("distill student no-tokenizer", ["distill", "--student", f["no-tokenizer"], "--generations", ok_gen, "--out", out("d")])
    add("distill --resume nothing", [*d, "--resume", "--out", out("d")])
    add("distill --out blocked", [*d, "--out", f"{blk}/d"])
    for y in ("deep.yaml", "malformed.yaml", "list.yaml", "latin1.yaml", "unknown-key.yaml", "wrong-type.yaml",
              "out-of-range.yaml"):
        add(f"distill --config {y}", [*d, "--config", f[y], "--out", out("d")])
    add("distill --config missing", [*d, "--config", out("none.yaml"), "--out", out("d")])
    # export
    add("export unknown variant", ["export", T, "--variant", "gguf:q3_xyz", "--out", out("e")])
    add("export variant twice", ["export", T, "--variant", "gguf:q8_0", "--variant", "gguf:q8_0", "--out", out("e")])
    add("export cut weights", ["export", f["cut-weights"], "--variant", "gguf:q8_0", "--out", out("e")])
    add("export --out blocked", ["export", T, "--variant", "gguf:q8_0", "--out", f"{blk}/e"])
    add("export into an existing bundle", ["export", T, "--variant", "gguf:q8_0", "--out", f["bundle-parent"]])
    # targets
    for y in ("deep.yaml", "malformed.yaml", "list.yaml", "latin1.yaml", "profile-bad-unit.yaml",
              "profile-missing-key.yaml", "profile-wrong-arch.yaml"):
        add(f"targets show {y}", ["targets", "show", f[y]])
    add("targets show unknown", ["targets", "show", "toaster"])
    # bench
    for b in ("bundle-escape", "bundle-absolute", "bundle-no-version", "bundle-not-json", "bundle-latin1",
              "bundle-missing-file", "bundle-empty"):
        add(f"bench {b}", ["bench", f[b], "--target", "laptop", "--out", out("b")])
    add("bench bandwidth fast", ["bench", f["bundle-escape"], "--target", "laptop", "--bandwidth", "fast", "--out",
                                 out("b")])
    add("bench repeats 0", ["bench", f["bundle-escape"], "--target", "laptop", "--repeats", "0", "--out", out("b")])
    add("bench unknown target", ["bench", f["bundle-escape"], "--target", "toaster", "--out", out("b")])
    add("bench profile bad unit", ["bench", f["bundle-escape"], "--target", f["profile-bad-unit.yaml"], "--out",
                                   out("b")])
    add("bench --out blocked", ["bench", f["bundle-escape"], "--target", "laptop", "--out", f"{blk}/b"])
    # eval, data, safety, run
    add("eval --out blocked", ["eval", T, "--limit", "1", "--out", f"{blk}/e.json"])
    add("eval no-tokenizer", ["eval", f["no-tokenizer"], "--limit", "1"])
    add("data split latin-1", ["data", "split", f["prompts-latin1.jsonl"], "--out", out("s")])
    add("data split fractions", ["data", "split", ok_p, "--fractions", "0.5,0.5", "--out", out("s")])
    add("data split --out blocked", ["data", "split", ok_p, "--out", f"{blk}/s"])
    add("safety eval --out blocked", ["safety", "eval", T, "--out", f"{blk}/s.json"])
    add("safety eval no-tokenizer", ["safety", "eval", f["no-tokenizer"]])
    add("safety reapply --out blocked", ["safety", "reapply", "--student", T, "--out", f"{blk}/r"])
    add("safety reapply steps 0", ["safety", "reapply", "--student", T, "--steps", "0", "--out", out("r")])
    add("run unknown target", ["run", "--target", "toaster", "--out", out("run")])
    add("run profile deep", ["run", "--target", f["deep.yaml"], "--out", out("run")])
    add("run teacher gguf", ["run", "--target", "laptop", "--teacher", f["magic.gguf"], "--out", out("run")])
    add("run --out blocked", ["run", "--target", "laptop", "--out", f"{blk}/run"])
    add("run --config latin-1", ["run", "--config", f["latin1.yaml"], "--target", "laptop", "--out", out("run")])
    # odd values: URLs, numbers where text belongs, alias bombs, keys set twice, folders with only a config
    o = ["--teacher-engine", "openai", "--teacher-model", "m", "--prompts", ok_p]
    add("generate url unclosed [ipv6", ["generate", *o, "--teacher-url", "http://[::1/v1", "--out", out("g.jsonl")])
    add("generate url port not a number", ["generate", *o, "--teacher-url", "http://127.0.0.1:80a/v1", "--out",
                                           out("g.jsonl")])
    add("generate url 100k characters", ["generate", *o, "--teacher-url", "http://[" + "x" * 100_000, "--out",
                                         out("g.jsonl")])
    add("safety eval content a number", ["safety", "eval", T, "--data", f["suite-number"]])
    add("distill content a number", ["distill", "--student", T, "--generations", f["gen-number.jsonl"], "--out", out("d")])
    add("models info config only", ["models", "info", f["config-only"]])
    add("export config only", ["export", f["config-only"], "--variant", "gguf:q8_0", "--out", out("e")])
    add("targets show alias bomb", ["targets", "show", f["laughs.yaml"]])
    add("distill --config alias bomb", [*d, "--config", f["laughs.yaml"], "--out", out("d")])
    add("targets show key twice", ["targets", "show", f["dup-key.yaml"]])
    # a full disk: a file-size limit (EFBIG), and a real one (ENOSPC) on a small tmpfs where one could be mounted
    quick = ["--chunks", "1", "--chunk-len", "32"]
    mb = 2**20
    add("full disk (limit): data split", ["data", "split", f["prompts-2m.jsonl"], "--out", out("s")],
        fault=Fault(fsize=100_000))
    add("full disk (limit): export gguf q8_0", ["export", T, "--variant", "gguf:q8_0", *quick, "--out", out("e")],
        fault=Fault(fsize=50 * mb))
    add("full disk (limit): export onnx fp32", ["export", T, "--variant", "onnx:fp32", *quick, "--out", out("e")],
        fault=Fault(fsize=50 * mb))
    add("full disk (limit): prune", ["prune", "--teacher", T, "--teacher-width", "--layers", "2", "--out", out("p")], fault=Fault(fsize=50 * mb))
    add("full disk (limit): cache-logits", ["cache-logits", "--teacher-engine", "torch", "--generations", f["gen-long.jsonl"], "--k", "64", "--out",
                                             out("c")], fault=Fault(fsize=100_000))
    if tmpfs is not None:
        add("full disk (tmpfs 64 MiB): export gguf q8_0", ["export", T, "--variant", "gguf:q8_0", *quick, "--out",
                                                            tmpfs / "64m" / "e"])
        add("full disk (tmpfs 1 MiB): data split", ["data", "split", f["prompts-2m.jsonl"], "--out",
                                                     tmpfs / "1m" / "s"])
    # signals while children run: every child stops with the command; SIGKILL's children die with it
    bench = ["bench", f["bundle-ok"], "--target", "laptop", "--out", out("b")]
    add("SIGINT bench while its worker runs", bench, 130, Fault(signal=signal.SIGINT, marker="edgedistill.bench.worker"))
    add("SIGTERM bench while its worker runs", bench, 143, Fault(signal=signal.SIGTERM,
                                                                 marker="edgedistill.bench.worker"))
    exp = ["export", T, *quick, "--out", out("e")]
    add("SIGINT export while the converter runs", [*exp, "--variant", "gguf:q8_0"], 130,
        Fault(signal=signal.SIGINT, marker="convert_hf_to_gguf"))
    add("SIGTERM export while the quantizer runs", [*exp, "--variant", "gguf:q8_0"], 143,
        Fault(signal=signal.SIGTERM, marker="llama_model_quantize"))
    add("SIGTERM export while the ONNX builder runs", [*exp, "--variant", "onnx:fp32"], 143,
        Fault(signal=signal.SIGTERM, marker="onnxruntime_genai.models.builder"))
    add("SIGTERM serve (drains, exit 0)", ["serve", f["bundle-ok"], "--port", "0"], 0,
        Fault(signal=signal.SIGTERM, marker="stdout:serving "))
    add("SIGINT serve (drains, exit 0)", ["serve", f["bundle-ok"], "--port", "0"], 0,
        Fault(signal=signal.SIGINT, marker="stdout:serving "))
    add("SIGKILL export while the converter runs, then rerun", [*exp, "--variant", "gguf:q8_0"], 0,
        Fault(signal=signal.SIGKILL, marker="convert_hf_to_gguf", rerun=True, keep="outs"))
    # a served teacher behind a fault injector: what a vendor API does to a long job
    def gen(proxy: str, prompts: str = ok_p, to: str | None = None) -> list[str]:
        return ["generate", "--teacher-url", served[proxy].url, "--teacher-model", "teacher", "--prompts", prompts,
                "--out", to or out(f"g-{proxy}.jsonl")]
    for status in ("429", "503"):
        add(f"served {status} with Retry-After (waited out, counted)", gen(status), 0,
            Fault(keep="outs", check=_says("2 rate limits (429/503) waited out", Path(out(f"g-{status}.jsonl")), 1)))
    add("served body cut short once (asked again)", gen("cut-once"), 0,
        Fault(keep="outs", check=_says("1 malformed responses asked again", Path(out("g-cut-once.jsonl")), 1)))
    add("served body cut short every time", gen("cut-always"))
    add("served another model behind the same name", gen("model-b", str(f["prompts-two.jsonl"]),
                                                          str(f["gen-served-a.jsonl"])),
        fault=Fault(check=_unchanged(f["gen-served-a.jsonl"])))
    add("SIGINT generate while the served teacher takes a minute", gen("slow"), 130,
        Fault(signal=signal.SIGINT, asked=served["slow"].posted, stop_within=5))
    return c


def classify(name: str, proc, expected: int, leftovers: list[str], left_running: list[int], fault,
             stopped: float) -> str:
    err = proc.stderr.strip().splitlines()
    if name not in USAGE_CASES and err and err[-1].endswith("--help)"):
        return "broken case"
    if "Traceback (most recent call last)" in proc.stderr:
        return "traceback"
    if left_running:
        return "process left running"
    if proc.returncode == 0 and expected != 0:
        return "silent success"
    if proc.returncode != expected:
        return f"exit {proc.returncode}"
    # a case under a fault did real work first: its progress lines may precede the one error line
    errors = [ln for ln in err if ln.startswith("error")]
    one = len(errors) == 1 and err[-1].startswith("error: ") if fault is not None else len(err) == 1
    if expected != 0 and (not one or not err[-1].startswith("error: ")):
        return "not one line"
    if leftovers:
        return "leftover"
    if fault is not None and fault.stop_within is not None and stopped > fault.stop_within:
        return "slow to stop"
    if fault is not None and fault.check is not None and (wrong := fault.check(proc.stdout + proc.stderr)):
        return f"wrong: {wrong}"
    return "handled"


def _mount_tmpfs(where: Path) -> Path | None:
    """Two small tmpfs under `where` (real full disks: 64m/ and 1m/), or None where this process may not mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    for size in ("64m", "1m"):
        (where / size).mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where / size)],
                              capture_output=True)
        if done.returncode != 0:
            _unmount(where)
            return None
    return where


def _unmount(where: Path) -> None:
    for size in ("64m", "1m"):
        subprocess.run(["umount", str(where / size)], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reliability" / "bad_inputs.json")
    ap.add_argument("--only", action="append", default=[], help="only cases whose name contains this (repeatable)")
    args = ap.parse_args()

    from edgedistill.models import DEFAULT_TEACHER
    from edgedistill.models.pull import pull

    teacher, _ = pull(DEFAULT_TEACHER)
    results, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgedistill-bad-inputs-") as tmp:
        w = Path(tmp)
        f = build_workspace(w, Path(teacher))
        tmpfs = _mount_tmpfs(w / "tmpfs")
        (w / "sys-tmp").mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(w / "sys-tmp")}
        stack: list = []
        try:
            served = start_served(w, f, stack)
            for name, argv, expected, fault in cases(f, Path(teacher), tmpfs, served):
                if args.only and not any(o in name for o in args.only):
                    continue
                before = snapshot(w)
                t = time.perf_counter()
                proc, left_running, stopped = run_case(argv, env, fault)
                if fault is not None and fault.rerun:  # after SIGKILL: the rerun must succeed and clean up
                    first = proc.returncode
                    proc, again, _ = run_case(argv, env, None)
                    left_running += again
                    proc.stderr += f"\n(first run: exit {first})" if proc.returncode else ""
                kept = fault.keep if fault is not None else None
                leftovers = sorted(p for p in snapshot(w) - before if not (kept and p.startswith(kept)))
                verdict = classify(name, proc, expected, leftovers, left_running, fault, stopped)
                results.append({"case": name, "args": [a[:200] for a in argv], "exit_code": proc.returncode,
                                "verdict": verdict, "stderr": proc.stderr.strip()[-600:].replace(tmp, "$W"),
                                "leftovers": leftovers, "processes_left_running": len(left_running),
                                "fault": None if fault is None else {
                                    "file_size_limit": fault.fsize, "rerun": fault.rerun,
                                    "signal": None if fault.signal is None else signal.Signals(fault.signal).name,
                                    "seconds_to_stop": round(stopped, 2) if fault.signal is not None else None},
                                "seconds": round(time.perf_counter() - t, 2)})
                print(f"{verdict:>14}  {name}: {proc.stderr.strip().splitlines()[-1:] or ['(nothing on stderr)']}"
                      .replace(tmp, "$W")[:200], flush=True)
                for p in leftovers + ([kept] if kept else []):  # not to be blamed on the next case
                    q = w / p
                    shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink(missing_ok=True)
        finally:
            for close in reversed(stack):
                close()
            if tmpfs is not None:
                _unmount(tmpfs)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    summary = {"tried": len(results), "handled": counts.get("handled", 0),
               "failed": len(results) - counts.get("handled", 0), "by_verdict": counts,
               "tracebacks": counts.get("traceback", 0), "silent_successes": counts.get("silent success", 0),
               "leftovers": counts.get("leftover", 0), "processes_left_running": counts.get("process left running", 0),
               "full_disk_on_tmpfs": tmpfs is not None}
    print(f"tried {summary['tried']}, handled {summary['handled']}, failed {summary['failed']} {counts}")
    write_result(args.out, {**run_record(), "seconds": round(time.perf_counter() - t0, 1), "summary": summary,
                            "cases": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
