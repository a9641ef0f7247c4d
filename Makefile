# Two entry points: `make run` and `make test`. Both install into .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# cpu -> onnxruntime; gpu -> onnxruntime-gpu (never both: they share one module name)
RUNTIME ?= cpu
# Used only when no torch is importable yet; a torch you already have is kept.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(RUNTIME)
OUT ?= runs/default
ARTIFACTS ?= artifacts/default

.PHONY: install run test test-gpu lint format bench clean

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "reusing the torch of $(PYTHON) (venv with system site-packages)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC) into $(VENV)..."; \
	  $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; }
	@echo "installing vaekit and its dependencies into $(VENV) (about a minute on a fresh machine)..."
	$(BIN)/python -m pip install -q -e ".[train,$(RUNTIME),openvino,mobile,dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/vaekit train --out $(OUT) --overwrite
	$(BIN)/vaekit export --checkpoint $(OUT) --out $(ARTIFACTS) --overwrite
	$(BIN)/vaekit generate --engine $(ARTIFACTS)/decoder.onnx --n 64 --seed 0 --out $(ARTIFACTS)/samples.png
	@echo "look at $(OUT)/samples.png, $(OUT)/reconstructions.png, $(OUT)/loss.png and $(ARTIFACTS)/parity.png"

test: install lint
	$(BIN)/python -m pytest

test-gpu: install
	$(BIN)/python -m pytest -m gpu -rs

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf runs artifacts .pytest_cache .mypy_cache .ruff_cache
