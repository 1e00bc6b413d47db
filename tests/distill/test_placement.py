"""Every tensor the library hands a model is on that model's device. The model is moved to the `meta` device and
its first forward (or generate) call is stopped by a hook that records where its inputs are: a path that builds its inputs on
the CPU for a model elsewhere (a CUDA model, in real use) fails here, on CPU."""

import types

import pytest
import torch

from edgedistill.distill.dataset import encode
from edgedistill.models import load_model
from tests import tiny

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Where is order NW-{i}{i}?"}],
            "response": f"Order NW-{i}{i} ships on day {i}."} for i in range(3)]


class Reached(Exception):
    def __init__(self, devices):
        super().__init__(devices)
        self.devices = devices


def _on_meta(model):
    """The model on `meta`; its forward raises Reached(the devices of every tensor it was given)."""
    model = model.to("meta")

    def stop(mod, args, kwargs):
        seen = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        raise Reached({str(t.device) for t in seen})

    model.register_forward_pre_hook(stop, with_kwargs=True)
    # generate() reads token ids on the host before its first forward (which meta cannot): stop it at the door
    model.generate = lambda *args, **kwargs: stop(model, args, kwargs)
    return model


def _placed(call):
    with pytest.raises(Reached) as got:
        call()
    assert got.value.devices == {"meta"}, f"inputs on {got.value.devices}, the model on meta"


@pytest.fixture()
def tiny_pair(tmp_path):
    model, tok = load_model(str(tiny.build_model_dir(tmp_path / "m", layers=1)))
    return model, tok, encode(tok, RECORDS, 48)


def test_teacher_generation(tiny_pair):
    from edgedistill.data.generate import DecodeSettings
    from edgedistill.engines.local import answers

    model, tok, _ = tiny_pair
    convs = [r["messages"] for r in RECORDS]
    _placed(lambda: list(answers(_on_meta(model), tok, convs, DecodeSettings(max_new_tokens=4), logprobs=2)))


def test_cache_building(tiny_pair):
    from edgedistill.engines.local import score_rows

    model, tok, data = tiny_pair
    _placed(lambda: list(score_rows(_on_meta(model), tok, data.examples, 4)))


def test_validation(tiny_pair):
    from edgedistill.distill.train import agreement_with_teacher

    model, tok, data = tiny_pair
    meta = _on_meta(model)
    _placed(lambda: agreement_with_teacher(meta, meta, data.examples, tok.pad_token_id))


def test_on_policy_sampling(tiny_pair):
    from edgedistill.distill.train import TrainSettings, _make_trainer_class
    from edgedistill.tensors import collate

    model, tok, data = tiny_pair
    meta = _on_meta(model)
    batch = collate(data.examples, tok.pad_token_id)  # where the data loader leaves it: the model decides
    fake = types.SimpleNamespace(accelerator=types.SimpleNamespace(unwrap_model=lambda m: m), pad_id=tok.pad_token_id,
                                 cfg=TrainSettings(on_policy=1.0, on_policy_max_new_tokens=4, precision="fp32", kd_chunk=0), eos_ids={tok.eos_token_id})
    cls = _make_trainer_class()
    _placed(lambda: cls._student_samples(fake, meta, batch))


def test_safety_scoring_and_hints(tiny_pair):
    """The safety phase: its answers go through `answers` (above); its margins and its hint map here."""
    from edgedistill.safety.hint import fit_hint_map
    from edgedistill.safety.margin import scores
    from edgedistill.safety.suite import load_suite

    model, tok, data = tiny_pair
    meta = _on_meta(model)
    _placed(lambda: scores(meta, tok, load_suite("test")[:2], "I can't help"))
    _placed(lambda: fit_hint_map(meta, meta, data.examples, tok.pad_token_id, (1, 1)))
