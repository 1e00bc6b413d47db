"""formats: the float writers every scheme starts from, below both quantize/ (which builds on them) and export/
(which orchestrates): gguf.py runs llama.cpp's own converter (sources from llamacpp_source.py), onnx.py
exports an fp32 ONNX with its KV cache."""
