import json

import numpy as np
import pytest
import torch

from edgedistill.distill import logit_cache
from edgedistill.distill.dataset import encode
from edgedistill.distill.settings import LossSettings
from edgedistill.distill.pruning import StudentShape, derive_student
from edgedistill.distill.train import TrainSettings, train
from edgedistill.errors import EdgeDistillError
from edgedistill.models import load_model
from tests import tiny

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Alarm E{i}{i} on M-20{i}: what now?"}],
            "response": f"Check the coolant flow on M-20{i} first, then reset alarm E{i}{i}."} for i in range(8)]


def _build(teacher, data, out, k):
    from edgedistill.engines.local import score_rows

    return logit_cache.build(score_rows(teacher[0], teacher[1], data.examples, k), "tiny", "fp1", data, out, k=k,
                             vocab=teacher[0].config.vocab_size)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    t_dir = tiny.build_model_dir(root / "teacher", layers=3, hidden=64, heads=4, kv_heads=2, seed=2, init_std=0.2)
    teacher = load_model(str(t_dir))
    s_dir = derive_student("t", StudentShape(layers=1), ["Where is my order NW-123456? " * 40], root / "student",
                           seq_len=32, max_tokens=256, loaded=teacher)
    data = encode(teacher[1], RECORDS, 96)
    return root, t_dir, s_dir, teacher, data


def test_build_and_load(setup, tmp_path):
    _, _, _, teacher, data = setup
    meta = _build(teacher, data, tmp_path / "c", 16)
    assert meta["tokens"] == data.response_tokens and meta["k"] == 16
    assert meta["bytes_per_token"] == 16 * (2 + 2) + 2  # uint16 ids + float16 log-probs, float16 tail mass
    assert meta["engine"] == {"engine": "torch"} and meta["positions_without_teacher_topk"] == 0
    assert 0 < meta["teacher_mass_in_top_k"] <= 1
    cache = logit_cache.load(tmp_path / "c", data, "fp1")
    assert cache.meta["tokens"] == data.response_tokens and len(meta["shards"]) == 1
    ids, lps = cache.rows(0)
    assert ids.shape == lps.shape == (sum(x != -100 for x in data.examples[0]["labels"]), 16)
    with pytest.raises(EdgeDistillError, match="already exists"):
        _build(teacher, data, tmp_path / "c", 16)


def test_shards_read_as_one_cache(setup, tmp_path):
    """A cache cut into many shards gives every batch exactly what the one-shard cache gives, and its arrays
    concatenate to the same ones."""
    _, _, _, teacher, data = setup
    _build(teacher, data, tmp_path / "one", 8)
    from edgedistill.engines.local import score_rows

    meta = logit_cache.build(score_rows(teacher[0], teacher[1], data.examples, 8), "tiny", "fp1", data,
                             tmp_path / "many", k=8, vocab=teacher[0].config.vocab_size, shard_tokens=20)
    assert len(meta["shards"]) >= 3 and sum(s["sequences"] for s in meta["shards"]) == len(data.examples)
    one, many = logit_cache.load(tmp_path / "one", data), logit_cache.load(tmp_path / "many", data)
    from edgedistill.tensors import collate

    batch = collate(data.examples[2:7], 0)
    for a, b in zip(one.teacher_for(list(range(2, 7)), batch["labels"]), many.teacher_for(list(range(2, 7)), batch["labels"])):
        assert torch.equal(a, b)
    arrays = [logit_cache.load_arrays(tmp_path / n) for n in ("one", "many")]
    for name in ("ids", "logprobs", "tail_mass", "offsets"):
        assert np.array_equal(arrays[0][name], arrays[1][name]), name


def test_a_missing_or_truncated_shard_is_refused_before_training(setup, tmp_path):
    from edgedistill.engines.local import score_rows

    _, _, _, teacher, data = setup
    meta = logit_cache.build(score_rows(teacher[0], teacher[1], data.examples, 4), "tiny", "fp1", data,
                             tmp_path / "c", k=4, vocab=teacher[0].config.vocab_size, shard_tokens=20)
    second = tmp_path / "c" / meta["shards"][1]["file"]
    body = second.read_bytes()
    second.write_bytes(body[:-10])
    with pytest.raises(logit_cache.StaleCacheError, match="truncated or replaced"):
        logit_cache.load(tmp_path / "c", data)
    second.unlink()
    with pytest.raises(logit_cache.StaleCacheError, match=r"shard shard-00001.safetensors is missing"):
        logit_cache.load(tmp_path / "c", data)


def test_a_version_1_cache_is_still_read(setup, tmp_path):
    """Caches written before shards (one topk.safetensors with global offsets) load and give the same rows."""
    from safetensors.numpy import save_file

    _, _, _, teacher, data = setup
    _build(teacher, data, tmp_path / "new", 8)
    arrays = logit_cache.load_arrays(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    save_file(arrays, str(old / "topk.safetensors"))
    meta = json.loads((tmp_path / "new" / "cache.json").read_text())
    meta.pop("shards")
    (old / "cache.json").write_text(json.dumps({**meta, "format": "edgedistill-topk-v1"}))
    a, b = logit_cache.load(old, data), logit_cache.load(tmp_path / "new", data)
    for i in range(len(data.examples)):
        assert all(np.array_equal(x, y) for x, y in zip(a.rows(i), b.rows(i)))


def test_stale_cache_is_refused(setup, tmp_path):
    _, _, _, teacher, data = setup
    _build(teacher, data, tmp_path / "c", 8)
    other = encode(teacher[1], RECORDS[:-1], 96)
    with pytest.raises(logit_cache.StaleCacheError, match="other training data"):
        logit_cache.load(tmp_path / "c", other)
    with pytest.raises(logit_cache.StaleCacheError, match="not this teacher"):
        logit_cache.load(tmp_path / "c", data, "another-fingerprint")
    (tmp_path / "c" / "cache.json").write_text(json.dumps({"format": "v0"}))
    with pytest.raises(EdgeDistillError, match="unknown cache format"):
        logit_cache.load(tmp_path / "c", data)


def test_training_from_a_full_vocab_cache_matches_the_live_teacher(setup, tmp_path):
    """With k = the whole vocabulary the cache loses only float16 rounding, so the losses must agree."""
    root, t_dir, s_dir, teacher, data = setup
    vocab = teacher[0].config.vocab_size
    _build(teacher, data, tmp_path / "c", vocab)
    cache = logit_cache.load(tmp_path / "c", data)
    cfg = TrainSettings(steps=4, batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=0, logging_steps=1,
                      save_steps=100, precision="fp32", kd_chunk=0)
    loss = LossSettings(loss="reverse_kl", kd_weight=1.0)
    train(load_model(str(t_dir)), load_model(str(s_dir)), data.examples, tmp_path / "live", loss, cfg)
    train((None, teacher[1]), load_model(str(s_dir)), data.examples, tmp_path / "cached", loss, cfg, cache=cache)
    logs = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
            for r in ("live", "cached")]
    assert len(logs[0]) == 4
    for a, b in zip(*logs):
        assert a == pytest.approx(b, rel=2e-2, abs=1e-3)


def test_cache_without_teacher_refuses_on_policy(setup, tmp_path):
    _, _, s_dir, teacher, data = setup
    _build(teacher, data, tmp_path / "c", 4)
    cache = logit_cache.load(tmp_path / "c", data)
    with pytest.raises(EdgeDistillError, match="on-policy steps need the live teacher"):
        train((None, teacher[1]), load_model(str(s_dir)), data.examples, tmp_path / "r", LossSettings(kd_weight=1.0),
              TrainSettings(steps=1, on_policy=0.5, precision="fp32", kd_chunk=0), cache=cache)


def test_a_cache_from_another_model_at_the_same_path_is_refused(setup, tmp_path):
    """cache-logits from the teacher at a path, then another model put at that path: distill refuses the cache,
    naming both fingerprints, before training and without writing a student."""
    import shutil

    from edgedistill.distill.stage import CacheSettings, DistillSettings, cache_logits, distill

    _, t_dir, s_dir, _, _ = setup
    teacher = tmp_path / "teacher"
    shutil.copytree(t_dir, teacher)
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    cache_logits(CacheSettings(teacher=str(teacher), generations=[gen], out=tmp_path / "cache", k=8, max_length=96, teacher_engine="torch"))
    shutil.rmtree(teacher)
    tiny.build_model_dir(teacher, layers=3, hidden=64, heads=4, kv_heads=2, seed=5, init_std=0.2)
    with pytest.raises(logit_cache.StaleCacheError, match=r"\([0-9a-f]{16}\), not this teacher \([0-9a-f]{16}\)"):
        distill(DistillSettings(teacher=str(teacher), student=str(s_dir), generations=[gen], logit_cache=tmp_path / "cache",
                                out=tmp_path / "run", steps=1, max_length=96))
    assert not (tmp_path / "run" / "student").exists()
