"""The precision graphs: fp16, bf16 and int8 ONNX graphs written from the fp32 ones, each refused unless it meets
its parity row."""
