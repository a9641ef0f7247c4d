"""One module per runtime behind `runtimes.base`'s interface; each imports its own library lazily and may import
core's torch-free modules, `artifacts`, `base` and `registry` (only `pyt` and the ExecuTorch backend import torch)."""
