"""export: write models in the formats runtimes load (GGUF, ONNX), validated, as bundles."""
