"""vaekit: train a VAE, export it to ONNX/TensorRT, and prove the deployed artifacts match."""

__version__ = "0.1.0"
