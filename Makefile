# Two commands do everything: `make serve` runs the gateway, `make test` runs the checks.
# `make audit` (pip-audit) is separate: it needs PyPI's per-release JSON API, and fails, not
# passes, when it could not audit.
# Both set up .venv first (idempotent: it reinstalls only when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The one place that says which torch to install when none is present (Linux only).
# A plain `torch` from PyPI is a multi-GB CUDA build on Linux. Users who want the small
# CPU build add PyTorch's CPU index:  make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# GPU users install the CUDA build first, as pytorch.org documents; setup then keeps it.
TORCH_SPEC ?= torch==2.13.0
# The end-of-turn model; "make setup TURN_MODEL_SPEC=" style overrides work as for torch.
TURN_MODEL_SPEC ?= pipecat-ai==1.14.0
TORCH_PIP_ARGS ?=
ARGS ?=

.PHONY: setup serve test lint typecheck unit audit bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if [ "$$(uname -s)" = Linux ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC) (CPU) first"; \
		$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Smart Turn v3 (the optional end-of-turn model) ships inside pipecat-ai: only its ONNX
	@# file is used, so the package comes without its many dependencies.
	$(BIN)/python -m pip install --quiet --no-deps "$(TURN_MODEL_SPEC)"
	@touch $@

serve: setup
	$(BIN)/local-ai-gateway serve $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q $(ARGS)

test: lint typecheck unit

audit: setup
	$(BIN)/python -m scripts.audit

bench: setup
	$(BIN)/python -m bench all --quick --out bench-out

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
