"""edgedistill.paths.atomic_file: one file is replaced whole or left as it was."""

from __future__ import annotations

import pytest

from edgedistill.paths import atomic_file, write_text_atomic


def test_atomic_file_replaces_on_success_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "sub" / "data.jsonl"
    write_text_atomic(out, "old\n")
    with atomic_file(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        tmp.write_text("new\n")
        assert out.read_text() == "old\n"  # not visible before the block ends
    assert out.read_text() == "new\n"
    assert [p.name for p in out.parent.iterdir()] == ["data.jsonl"]


def test_atomic_file_keeps_the_old_file_when_writing_fails_half_way(tmp_path):
    out = tmp_path / "model.gguf"
    write_text_atomic(out, "complete")
    with pytest.raises(RuntimeError):
        with atomic_file(out) as tmp:
            tmp.write_text("half of a")
            raise RuntimeError("writer died")
    assert out.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]
