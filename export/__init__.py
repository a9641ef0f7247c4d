"""Make deployable artifacts from a checkpoint, one step per target: `onnx` (+ `graph`, the checks and metadata
every ONNX writer shares), `precisions/`, `tensorrt/`, `web/`; `pipeline` alone orders them and publishes the
directory with its `manifest`."""
