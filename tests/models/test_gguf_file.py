import pytest

from edgedistill.errors import InvalidModelError
from edgedistill.models import gguf_file
from tests import tiny


def test_valid_file_opens(tmp_path):
    path = tiny.write_small_gguf(tmp_path / "ok.gguf")
    reader = gguf_file.open_gguf(path)
    assert gguf_file.metadata(reader)["general.architecture"] == "llama"
    assert gguf_file.tensor_param_count(reader) == 4 * 64 * 64


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(InvalidModelError, match="not a GGUF file"):
        gguf_file.open_gguf(bad)


def test_empty_file(tmp_path):
    bad = tmp_path / "empty.gguf"
    bad.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="not a GGUF file"):
        gguf_file.open_gguf(bad)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, keep):
    path = tiny.write_small_gguf(tmp_path / "ok.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidModelError, match="truncated|damaged"):
        gguf_file.open_gguf(cut)


def test_header_cut_inside_metadata(tmp_path):
    path = tiny.write_small_gguf(tmp_path / "ok.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InvalidModelError, match="damaged or truncated"):
        gguf_file.open_gguf(cut)


def test_qwen2_pre_tokenizer_splits_as_llama_cpp_does():
    """Qwen2's pre-tokenizer (tokenizer.ggml.pre = qwen2): digits one by one, a letter run takes at most one leading
    non-letter, contractions apart, newlines kept together, runs of spaces before a word leave it its own space.
    (The real Qwen2.5 files are compared token for token with llama.cpp in tests/models/test_real_qwen.py.)"""
    from edgedistill.models.gguf_file import _pre_tokenizer

    pre = _pre_tokenizer("qwen2")
    pieces = [p for p, _ in pre.pre_tokenize_str("It's 2024:  x\n\ny")]
    # byte-level alphabet: space is Ġ, newline Ċ
    assert pieces == ["It", "'s", "Ġ", "2", "0", "2", "4", ":", "Ġ", "Ġx", "ĊĊ", "y"], pieces
