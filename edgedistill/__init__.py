"""edgedistill: distill, quantize, export and benchmark small language models for offline edge devices."""

__version__ = "0.1.0"
