"""formats: the float writers every scheme starts from, below both quantize/ (which builds on them) and export/
(which orchestrates): gguf.py writes an F16 GGUF (llama layout, tokenizer metadata, chat template), onnx.py
exports an fp32 ONNX with its KV cache."""
