import json

import pytest

from edgedistill.data import DataError, load_eval, load_prompts, load_texts


def _write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_prompts_chat_and_plain(tmp_path):
    f = _write(tmp_path / "p.jsonl", [
        {"id": "a", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"id": "b", "prompt": "Where is my parcel?", "category": "shipping", "reasoning": True},
        "",
    ])
    prompts, report = load_prompts(f)
    assert [p.id for p in prompts] == ["a", "b"] and report.loaded == 2 and not report.skipped
    assert prompts[1].messages == ({"role": "user", "content": "Where is my parcel?"},)
    assert prompts[1].reasoning and prompts[1].category == "shipping"


@pytest.mark.parametrize("bad, why", [
    ('{"id": "x", "messages": [', "not valid JSON"),
    ({"id": "x", "messages": [{"role": "bot", "content": "hi"}]}, "needs a role"),
    ({"id": "x", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "last message must come from the user"),
    ({"id": "x", "messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "needs a string 'id'"),
    ({"id": "x", "prompt": "  "}, "needs 'messages'"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_bad_prompt_names_file_and_line(tmp_path, bad, why):
    f = _write(tmp_path / "p.jsonl", [{"id": "ok", "prompt": "fine"}, bad])
    with pytest.raises(DataError, match=rf"p\.jsonl:2: .*{why}"):
        load_prompts(f)


def test_skip_bad_records_counts_them(tmp_path):
    f = _write(tmp_path / "p.jsonl", [{"id": "ok", "prompt": "fine"}, {"id": "ok", "prompt": "dup"}, {"id": "z"}])
    prompts, report = load_prompts(f, strict=False)
    assert [p.id for p in prompts] == ["ok"]
    assert len(report.skipped) == 2 and "duplicate id" in report.skipped[0]
    assert "1 records, 2 skipped" in str(report)


def test_empty_or_missing_file(tmp_path):
    with pytest.raises(DataError, match="no usable records"):
        load_prompts(_write(tmp_path / "e.jsonl", [""]))
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_eval_items_are_checked(tmp_path):
    good = {"id": "e1", "task": "yes_no", "prompt": "Is it late? Answer yes or no.", "answer": "yes", "choices": ["yes", "no"]}
    items, _ = load_eval(_write(tmp_path / "ok.jsonl", [good, {"id": "e2", "task": "arithmetic", "prompt": "2+2?", "answer": "4"}]))
    assert [i.task for i in items] == ["yes_no", "arithmetic"]
    for bad, why in [
        ({**good, "answer": "maybe"}, "not among the choices"),
        ({**good, "task": "essay"}, "is not one of"),
        ({"id": "e3", "task": "arithmetic", "prompt": "?", "answer": "four"}, "not a plain number"),
        ({**good, "choices": []}, "needs 'choices'"),
    ]:
        with pytest.raises(DataError, match=why):
            load_eval(_write(tmp_path / "bad.jsonl", [bad]))


def test_texts(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha text.")
    (tmp_path / "b.txt").write_text("   ")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("Gamma.")
    assert [n for n, _ in load_texts(tmp_path)] == ["a.txt", "c.txt"]
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        load_texts(tmp_path)
    with pytest.raises(DataError, match="no .txt files"):
        load_texts(tmp_path / "sub" / "nothing")


def test_prompt_tables_csv_and_parquet(tmp_path):
    """A CSV (a quoted comma, a header row) or Parquet table with a named prompt column reads as prompts; row ids
    name file and row when the table has no id column; a missing column is one line naming the columns there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = tmp_path / "mine.csv"
    csv.write_text('question,category\n"Where is, my order?",shipping\nLock out the press,safety\n')
    got, _ = load_prompts(csv, column="question")
    assert [(p.id, p.messages[0]["content"], p.category) for p in got] == [
        ("mine-2", "Where is, my order?", "shipping"), ("mine-3", "Lock out the press", "safety")]
    with pytest.raises(DataError, match=r"no column 'prompt' \(it has question, category\).*--prompt-column"):
        load_prompts(csv)
    table = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"prompt": ["a question", ""], "id": ["x", "y"]}), table)
    with pytest.raises(DataError, match=r"mine.parquet:2: needs 'messages'"):
        load_prompts(table)  # the row checks every prompt file has
    got, report = load_prompts(table, strict=False)
    assert [p.id for p in got] == ["x"] and len(report.skipped) == 1
