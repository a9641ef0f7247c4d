"""Make deployable artifacts from a checkpoint: ONNX graphs, quantized graphs, TensorRT engines, the manifest."""
