"""The exported ONNX graph: its input/output ``signature``, ``parity`` against PyTorch, and optional ``variants``
(fp16, int8) of it."""
