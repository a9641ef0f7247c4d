"""Run any artifact through one interface: PyTorch, ONNX Runtime, TensorRT."""
