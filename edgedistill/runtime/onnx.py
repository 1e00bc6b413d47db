"""ONNX backend: onnxruntime + tokenizers, with our own decode loop over the KV cache.

The loop binds inputs and outputs through onnxruntime's IOBinding: each step's present key/values stay
onnxruntime values and are bound as the next step's past without a round trip through numpy; only the last
row of logits is copied out. Nothing from torch or transformers is imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgedistill.runtime import GenerationConfig, LoadedModel
from edgedistill.runtime.text import Sampler, chat_template


class ONNXModel(LoadedModel):
    def __init__(self, path: Path, manifest: dict, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path, self.manifest = path, manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path / manifest["model_file"]), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.template, self.special = chat_template(path)
        eos = self.special.get("eos_token")
        self.eos_id = self.tokenizer.token_to_id(eos) if eos else None
        inputs = {i.name: i for i in self.sess.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.has_mask, self.has_pos = "attention_mask" in inputs, "position_ids" in inputs
        first = inputs[self.past_names[0]] if self.past_names else None
        self.kv_heads = int(first.shape[1]) if first is not None else 0
        self.head_dim = int(first.shape[3]) if first is not None else 0
        self.kv_dtype = np.float16 if first is not None and "float16" in first.type else np.float32

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_ids(self, prompt_ids: list[int], cfg: GenerationConfig) -> Iterator[int]:
        """Token ids, one at a time: prefill the prompt, then one token per step through the KV cache."""
        import onnxruntime as ort

        sample = Sampler(cfg.temperature, cfg.top_p, cfg.seed)
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
        past = [ort.OrtValue.ortvalue_from_numpy(empty) for _ in self.past_names]
        ids = np.asarray([prompt_ids], dtype=np.int64)
        pos = 0
        prev = None  # the previous step's binding owns the buffers of `past`: keep it alive until this step ran
        for _ in range(cfg.max_tokens):
            n = ids.shape[1]
            b = self.sess.io_binding()
            b.bind_cpu_input("input_ids", ids)
            if self.has_mask:
                b.bind_cpu_input("attention_mask", np.ones((1, pos + n), dtype=np.int64))
            if self.has_pos:
                b.bind_cpu_input("position_ids", np.arange(pos, pos + n, dtype=np.int64)[None])
            for name, value in zip(self.past_names, past):
                b.bind_ortvalue_input(name, value)
            b.bind_output("logits")
            for name in self.present_names:
                b.bind_output(name)
            self.sess.run_with_iobinding(b)
            prev = b  # noqa: F841
            outs = b.get_outputs()
            logits = outs[0].numpy()[0, -1]  # (V,) — the only copy out of onnxruntime per step
            past = list(outs[1:])
            pos += n
            nxt = sample(logits)
            if nxt == self.eos_id and not cfg.ignore_eos:
                return
            yield nxt
            ids = np.asarray([[nxt]], dtype=np.int64)

    def close(self) -> None:
        self.sess = None
