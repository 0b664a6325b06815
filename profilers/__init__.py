"""Latency: measured or predicted, for one ONNX file at one input shape."""
