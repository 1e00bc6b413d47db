"""ONNX backend: onnxruntime-genai runs the whole generation loop (KV cache, search) in C++.

Bundles are folders written by onnxruntime-genai's model builder: model.onnx (+ .data), genai_config.json and
the tokenizer. Text goes in and out through `tokenizers` (as for the GGUF backend, so both backends share one
chat template renderer and one detokenizer); token ids go through onnxruntime-genai. Nothing from torch or
transformers is imported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgedistill.runtime import SamplingParams, LoadedModel
from edgedistill.runtime.bundle import BundleError
from edgedistill.runtime.text import chat_template
from edgedistill.runinfo import available_cores

CONFIG_FILE = "genai_config.json"


def open_model(folder: Path, threads: int | None = None):
    """An onnxruntime_genai.Model over `folder`, on the CPU with `threads` intra-op threads [default: all]."""
    import onnxruntime_genai as og

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise BundleError(f"{folder} has no {CONFIG_FILE}: it is not an onnxruntime-genai model (ONNX bundles "
                          "exported before the move to onnxruntime-genai have another layout); export it again")
    config = og.Config(str(folder))
    config.clear_providers()  # CPU
    options = {"intra_op_num_threads": int(threads or available_cores()), "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def sliding_window(folder: Path) -> int:
    """The sliding-window size genai_config.json declares (Gemma 2/3), 0 for none: the runtime's key/value buffer
    (max_length) must hold at least that many positions, however short the request."""
    window = json.loads((Path(folder) / CONFIG_FILE).read_text())["model"]["decoder"].get("sliding_window") or {}
    return int(window.get("window_size") or 0)


def prompt_logits(model, ids: list[int], window: int = 0) -> np.ndarray:
    """Logits (T, V) of every position of `ids`, in one pass of the runtime's own loop."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max(len(ids), window), do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    return np.asarray(gen.get_output("logits"), dtype=np.float32)[0]


def generate_ids(model, prompt_ids: list[int], cfg: SamplingParams, eos_ids: set[int], window: int = 0
                 ) -> Iterator[int]:
    """Token ids, one at a time, until an end-of-generation id (not yielded; unless cfg.ignore_eos) or
    cfg.max_tokens. `window`: the model's sliding window (sliding_window), a floor for the buffer."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    context = int(params.get_search_options().get("max_length") or 0)  # the model's context by default
    if context and len(prompt_ids) >= context:
        raise BundleError(f"the prompt has {len(prompt_ids)} tokens; this model's context holds {context}: "
                          "shorten the prompt")
    total = min(len(prompt_ids) + cfg.max_tokens, context) if context else len(prompt_ids) + cfg.max_tokens
    search = {"max_length": min(max(total, window), context) if context else max(total, window), "batch_size": 1}
    if cfg.temperature > 0:
        search.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        if cfg.seed is not None:
            search["random_seed"] = int(cfg.seed)
    else:
        search["do_sample"] = False
    if cfg.ignore_eos:
        search["min_length"] = total  # end-of-generation ids are masked until the last token asked for
    params.set_search_options(**search)
    if cfg.constraint is not None:
        _guide(params, cfg.constraint)
    try:
        gen = og.Generator(model, params)
    except RuntimeError as e:
        if cfg.constraint is None:
            raise
        from edgedistill.runtime.constrain import ConstraintError

        raise ConstraintError(f"onnxruntime-genai's guidance refused the constraint: {e}") from None
    gen.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    for _ in range(cfg.max_tokens):
        if gen.is_done():
            return
        gen.generate_next_token()
        tid = int(gen.get_next_tokens()[0])
        if tid in eos_ids and not cfg.ignore_eos:
            return
        yield tid


def _guide(params, constraint) -> None:
    """onnxruntime-genai's guidance (llguidance) for the constraint, or a one-line refusal where this build of it
    has none."""
    from edgedistill.runtime.constrain import ConstraintError, lark

    if not hasattr(params, "set_guidance"):
        from importlib import metadata

        raise ConstraintError(f"constrained output on an ONNX bundle needs onnxruntime-genai with guidance (0.8 or "
                              f"later); this one is {metadata.version('onnxruntime-genai')}: upgrade it, or use a "
                              "GGUF bundle")
    try:
        params.set_guidance("lark_grammar", lark(constraint))
    except RuntimeError as e:
        raise ConstraintError(f"onnxruntime-genai's guidance refused the constraint: {e}") from None


def context_length(folder: Path) -> int:
    """The positions genai_config.json gives the model (its search max_length, else its context length)."""
    cfg = json.loads((Path(folder) / CONFIG_FILE).read_text())
    return int((cfg.get("search") or {}).get("max_length") or cfg["model"].get("context_length") or 0)


def eos_ids(folder: Path) -> set[int]:
    """The end-of-generation ids genai_config.json declares."""
    eos = json.loads((Path(folder) / CONFIG_FILE).read_text())["model"].get("eos_token_id")
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


class ONNXModel(LoadedModel):
    def __init__(self, path: Path, manifest: dict, threads: int | None = None, n_ctx: int = 2048):
        """n_ctx: unused (onnxruntime-genai's cache grows as needed; the signature is the runtime's, see load)."""
        from tokenizers import Tokenizer

        self.path, self.manifest = path, manifest
        self.model = open_model(path, threads)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.template, self.special = chat_template(path)
        self.eos_ids = eos_ids(path)
        self.window = sliding_window(path)
        self.context_length = context_length(path)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_ids(self, prompt_ids: list[int], cfg: SamplingParams) -> Iterator[int]:
        self._computed = len(prompt_ids)  # a new generator each call: nothing is cached between calls
        return generate_ids(self.model, prompt_ids, cfg, self.eos_ids, self.window)

    def runtime_info(self) -> dict:
        from importlib import metadata

        import onnxruntime

        return {"runtime": "onnxruntime-genai", "onnxruntime": onnxruntime.__version__,
                "onnxruntime_genai": metadata.version("onnxruntime-genai"),
                "providers": onnxruntime.get_available_providers()}

    def prompt_tokens_computed(self) -> int | None:
        return getattr(self, "_computed", None)

    def close(self) -> None:
        self.model = None


class ONNXLogits:
    """onnxruntime-genai over a folder its model builder wrote: the runtime the bundle will run in."""

    def __init__(self, path: Path, *, n_ctx: int = 0, threads: int | None = None):
        """path: the model.onnx of a builder's folder (n_ctx unused: the cache grows as needed)."""
        self.folder = Path(path).parent
        self.model = open_model(self.folder, threads)
        self.window = sliding_window(self.folder)

    def logits(self, chunks) -> list[np.ndarray]:
        return [prompt_logits(self.model, list(ids), self.window) for ids in chunks]

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        # no id is treated as the end here: the runtime itself stops after an end-of-generation id, which is kept,
        # as torch's generate and llama.cpp keep it
        return list(generate_ids(self.model, list(prompt_ids), SamplingParams(max_tokens=n), set(),
                                             self.window))

    def close(self) -> None:
        self.model = None


Model, Logits = ONNXModel, ONNXLogits  # what runtime.bundle.backend('onnx') offers
