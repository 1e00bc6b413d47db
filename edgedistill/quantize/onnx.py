"""ONNX schemes: the fp32 export from optimum-onnx, and onnxruntime's quantizers on top of it.

- int8 / int4: weight-only, blockwise (MatMulNBits for the linear layers, GatherBlockQuantized for the
  embedding); activations stay float, which is why these keep quality on small models.
- int8_dynamic: onnxruntime's classic dynamic quantization (int8 weights per channel, activations quantized
  per tensor at run time).
- int8_static: QDQ with activation ranges calibrated on calibration_data's train prompts.

Tied embeddings: the exporter feeds the lm_head MatMul from a Transpose of the embedding, which weight-only
quantizers skip (no constant weight) — the "4-bit" file then keeps the whole fp32 embedding. `untie_lm_head`
turns the Transpose into its own constant first, so both copies get quantized.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from edgedistill.errors import EdgeDistillError
from edgedistill.paths import atomic_dir
from edgedistill.quantize import BuildContext, Scheme, register

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
_LARGE = 1_800_000_000  # above this, save weights as external data (protobuf's 2 GB limit)


def _fp32(ctx: BuildContext) -> Path:
    """The fp32 export of this run (with config and tokenizer beside it), made once and shared."""
    from edgedistill.formats.onnx import export_onnx

    folder = ctx.work_dir / "onnx-fp32"
    if not (folder / MODEL_FILE).exists():
        with atomic_dir(folder) as tmp:
            export_onnx(ctx.model_dir, tmp, trust_remote_code=bool(ctx.options.get("trust_remote_code")))
    return folder / MODEL_FILE


def _copy_side_files(src_dir: Path, out_dir: Path) -> None:
    """config.json, generation_config.json and the tokenizer that optimum wrote beside the graph."""
    for f in src_dir.iterdir():
        if f.is_file() and not f.name.startswith(MODEL_FILE):
            shutil.copyfile(f, out_dir / f.name)


def _save(model, path: Path) -> Path:
    import onnx

    big = model.ByteSize() > _LARGE if hasattr(model, "ByteSize") else False
    if big:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    return path


def untie_lm_head(model) -> int:
    """Replace Transpose(initializer) -> MatMul by a transposed constant; returns how many were replaced."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    replaced = 0
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        src = producers.get(node.input[1])
        if src is None or src.op_type != "Transpose" or src.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[src.input[0]])
        perm = [a.ints for a in src.attribute if a.name == "perm"]
        t = np.transpose(weight, list(perm[0]) if perm else None)
        name = node.input[1] + "_untied"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(t), name))
        node.input[1] = name
        replaced += 1
    if replaced:  # drop Transposes nobody reads any more
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]
        for n in dead:
            model.graph.node.remove(n)
    return replaced


def quantize_embedding_int8(model) -> int:
    """Gather over a float embedding -> Gather over int8 rows and their per-row scales, then one multiply: the
    table is stored at 8 bits and only the looked-up rows are ever turned back into floats."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = 0
    for idx, node in enumerate(list(model.graph.node)):
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        table = numpy_helper.to_array(inits[node.input[0]])
        if table.ndim != 2 or table.dtype != np.float32 or table.shape[0] < 256:
            continue  # only large float tables are embeddings worth quantizing
        scale = np.abs(table).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8)
        base = node.input[0]
        model.graph.initializer.remove(inits[base])
        model.graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                        numpy_helper.from_array(scale.astype(np.float32)[:, None], base + "_scale")])
        out = node.output[0]
        new = [
            helper.make_node("Gather", [base + "_int8", node.input[1]], [out + "_q"], name=node.name + "_q", axis=0),
            helper.make_node("Gather", [base + "_scale", node.input[1]], [out + "_s"], name=node.name + "_s", axis=0),
            helper.make_node("Cast", [out + "_q"], [out + "_f"], name=node.name + "_cast", to=1),
            helper.make_node("Mul", [out + "_f", out + "_s"], [out], name=node.name + "_dq"),
        ]
        pos = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for k, n in enumerate(new):
            model.graph.node.insert(pos + k, n)
        done += 1
    return done


def _lm_head_nodes(model) -> list[str]:
    """MatMul nodes that produce the logits output (the lm_head)."""
    outputs = {o.name for o in model.graph.output if o.name == "logits"}
    producers = {o: n for n in model.graph.node for o in n.output}
    names = []
    for out in outputs:
        n = producers.get(out)
        while n is not None and n.op_type != "MatMul" and n.input:
            n = producers.get(n.input[0])
        if n is not None and n.op_type == "MatMul":
            names.append(n.name)
    return names


def weight_only(src: Path, dst: Path, *, bits: int, block_size: int, symmetric: bool, accuracy_level: int | None,
                head_bits: int, algorithm: str = "rtn") -> Path:
    """Blockwise weight-only quantization: every MatMul at `bits` by `algorithm` ("rtn", or "hqq", which fits a
    float scale and zero point per block by a few optimisation steps), except the lm_head, always round-to-nearest
    at head_bits; the embedding Gather at `bits` by round-to-nearest (8-bit: per row)."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnb

    if algorithm not in ("rtn", "hqq"):
        raise EdgeDistillError(f"unknown int4 algorithm {algorithm!r}; choose rtn or hqq")
    model = onnx.load(str(src))
    untie_lm_head(model)
    head = _lm_head_nodes(model)
    axes = (("MatMul", 0), ("Gather", 1))

    def rtn(nbits, ops):
        return mnb.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=nbits,
                                                accuracy_level=accuracy_level, op_types_to_quantize=ops, quant_axes=axes)

    passes = []  # (config, nodes_to_exclude)
    # HQQ fits the tied output projection worse than round-to-nearest does (measured on the default teacher)
    separate_head = bool(head) and (head_bits != bits or algorithm == "hqq")
    if separate_head:  # nodes_to_include is not honoured by every algorithm: exclude every other MatMul instead
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in head]
        passes.append((rtn(head_bits, ("MatMul",)), others))
    if bits == 4:
        passes.append((rtn(bits, ("Gather",)), None))  # GatherBlockQuantized: 4 bits only
    else:
        quantize_embedding_int8(model)
    if algorithm == "hqq":
        body = mnb.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=("MatMul",),
                                            quant_axes=axes)
    else:
        body = rtn(bits, ("MatMul",))
    passes.append((body, head if separate_head else None))
    # The quantizer warns on every int4 pass that it raises the opset and IR version, which is expected here.
    quiet = logging.getLogger(mnb.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR if not log.isEnabledFor(logging.DEBUG) else level)
    try:
        for cfg, exclude in passes:
            q = mnb.MatMulNBitsQuantizer(model, bits=cfg.bits, block_size=block_size, is_symmetric=symmetric,
                                         accuracy_level=accuracy_level, nodes_to_exclude=exclude, algo_config=cfg)
            q.process()
            model = q.model.model
    finally:
        quiet.setLevel(level)
    if accuracy_level is not None:
        set_accuracy_level(model, accuracy_level)  # HQQ's config does not carry it: set it on every node
    return _save(model, dst)


def set_accuracy_level(model, level: int) -> int:
    """Set the compute precision of every MatMulNBits node (4: int8 activations, onnxruntime's fast kernels on
    x86-64 and arm64; 0: float, about 16x slower decode on an AVX2 machine, measured). Returns the node count."""
    from onnx import helper

    n = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            keep = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*keep, helper.make_attribute("accuracy_level", int(level))])
            n += 1
    return n


def _weight_only(bits: int, default_block: int, default_head_bits: int, default_algorithm: str):
    def build(ctx: BuildContext) -> Path:
        src = _fp32(ctx)
        _copy_side_files(src.parent, ctx.out_dir)
        o = ctx.options
        return weight_only(src, ctx.out_dir / MODEL_FILE, bits=bits, block_size=int(o.get("block_size") or default_block),
                           symmetric=bool(o.get("symmetric", True)),
                           accuracy_level=DEFAULT_ACCURACY if o.get("accuracy_level") is None else o["accuracy_level"],
                           head_bits=int(o.get("head_bits") or default_head_bits),
                           algorithm=o.get("algorithm") or default_algorithm)

    return build


def _build_fp32(ctx: BuildContext) -> Path:
    src = _fp32(ctx)
    _copy_side_files(src.parent, ctx.out_dir)
    for f in src.parent.iterdir():
        if f.name.startswith(MODEL_FILE):
            shutil.copyfile(f, ctx.out_dir / f.name)
    return ctx.out_dir / MODEL_FILE


def _build_dynamic(ctx: BuildContext) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _fp32(ctx)
    _copy_side_files(src.parent, ctx.out_dir)
    out = ctx.out_dir / MODEL_FILE
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
    return out


class _PromptReader:
    """Feeds calibration prompts (token ids) to onnxruntime's static calibrator, with an empty KV cache."""

    def __init__(self, model_path: Path, prompts: list[list[int]]):
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in sess.get_inputs()}
        del sess
        self.items = iter(prompts)

    def get_next(self):
        ids = next(self.items, None)
        if ids is None:
            return None
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((1, len(ids)), dtype=np.int64)
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        for name, spec in self.inputs.items():
            if name.startswith("past_key_values."):
                feeds[name] = np.zeros((1, int(spec.shape[1]), 0, int(spec.shape[3])), dtype=np.float32)
        return feeds


def _build_static(ctx: BuildContext) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not ctx.calibration:
        raise EdgeDistillError("onnx:int8_static needs calibration prompts; none were found in the data folder")
    src = _fp32(ctx)
    _copy_side_files(src.parent, ctx.out_dir)
    out = ctx.out_dir / MODEL_FILE
    n = int(ctx.options.get("calibration_prompts") or 16)
    quantize_static(str(src), str(out), _PromptReader(src, ctx.calibration[:n]), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True})
    return out


# MatMulNBits computes with int8 activations (per block of the input) by default: float compute dequantizes the
# weights on every call and decodes about 16x slower on an AVX2 CPU (benchmarks/results/runtime_speed.json).
DEFAULT_ACCURACY = 4
INT4_OPTIONS = ("block_size", "symmetric", "accuracy_level", "head_bits", "algorithm")

register(Scheme("onnx", "fp32", "float32 graph with KV cache from optimum-onnx: reproduces the torch model",
                _build_fp32, max_kl=1e-4, min_top1=0.995, exact=True, nominal_bits=32))
register(Scheme("onnx", "int8", "weight-only int8 in blocks of 32 (MatMulNBits, 8-bit embedding), int8 compute",
                _weight_only(8, 32, 8, "rtn"), max_kl=0.03, min_top1=0.90, nominal_bits=9, options=INT4_OPTIONS))
register(Scheme("onnx", "int4", "weight-only int4 in blocks of 32 (MatMulNBits; HQQ for the layers, round-to-nearest for embedding and lm_head)",
                _weight_only(4, 32, 4, "hqq"), max_kl=0.6, min_top1=0.60, nominal_bits=5, options=INT4_OPTIONS))
register(Scheme("onnx", "int8_dynamic", "onnxruntime dynamic int8: weights per channel, activations per tensor",
                _build_dynamic, max_kl=0.1, min_top1=0.85, nominal_bits=8))
register(Scheme("onnx", "int8_static", "onnxruntime static int8 (QDQ), activation ranges from the train prompts",
                _build_static, max_kl=0.1, min_top1=0.85, nominal_bits=8, options=("calibration_prompts",)))
