"""Phone and ARM board artifacts: ExecuTorch programs (XNNPACK) and ncnn nets, each with a JSON sidecar."""
