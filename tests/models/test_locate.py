import pytest

from edgedistill.errors import InvalidModelError, ModelNotFoundError, OfflineError
from edgedistill.models import DEFAULT_TEACHER, load_model, resolve
from edgedistill.models import locate


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'no-such-model'.*smollm2-135m-instruct"):
        resolve("no-such-model")


def test_registry_model_not_pulled_says_how_to_pull():
    with pytest.raises(ModelNotFoundError, match=f"edgedistill models pull {DEFAULT_TEACHER}"):
        resolve(DEFAULT_TEACHER)


def test_directory_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidModelError, match="has no config.json"):
        resolve(str(tmp_path))


def test_missing_paths(tmp_path):
    for spec in (str(tmp_path / "nope"), "./nope", "models/x/nope.gguf", "nope.gguf"):
        with pytest.raises(ModelNotFoundError, match="no such file or directory"):
            resolve(spec)


def test_other_file_is_rejected(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\x80\x04 pickle-ish")
    with pytest.raises(InvalidModelError, match="neither a model directory nor a .gguf file"):
        resolve(str(f))


def test_hub_id_offline_by_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="pass its local directory or .gguf file"):
        resolve("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_hub_id_unreachable_endpoint(monkeypatch):
    """The real socket check: nothing listens on 127.0.0.1:9, so the hub counts as unreachable at once."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert locate.hub_reachable(timeout=2) is False
    with pytest.raises(OfflineError, match="not reachable"):
        resolve("some-org/some-model")


def test_load_tiny_model_dir(tiny_model_dir):
    import torch

    ref = resolve(str(tiny_model_dir))
    assert ref.kind == "hf_dir"
    model, tok = load_model(ref)
    ids = tok("Where is my order?", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert logits.dtype == torch.float32
