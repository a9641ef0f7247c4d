"""TensorRT engines: `build` turns an ONNX graph into a strongly typed `.plan` with its sidecar (tensorrt imported
lazily); `engines` is `vaekit build-engine`'s library work on an existing artifact directory."""
