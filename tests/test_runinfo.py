"""edgedistill.runinfo.write_result: every benchmark's JSON result is written whole or not at all."""

from __future__ import annotations

import json

import pytest

from edgedistill.runinfo import write_result


def test_write_result_replaces_whole_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "results" / "r.json"
    write_result(out, {"a": 1})
    write_result(out, {"b": [1, 2]})
    assert json.loads(out.read_text()) == {"b": [1, 2]}
    assert out.read_text().endswith("\n") and sorted(p.name for p in out.parent.iterdir()) == ["r.json"]


def test_write_result_keeps_the_old_file_when_the_report_cannot_be_written(tmp_path):
    out = tmp_path / "r.json"
    write_result(out, {"a": 1})
    with pytest.raises(TypeError):
        write_result(out, {"a": object()})
    assert json.loads(out.read_text()) == {"a": 1}
