# One-command set-up: every target creates/reuses .venv and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-quality clean test-python

$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# torch first, the exact tested version: a local CPU wheel where the index serves one, else
	# pip's default build for the platform (on Linux x86_64 the CUDA build; see the README).
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/spa demo

test: $(STAMP)
	$(BIN)/ruff check spa tests benchmarks
	$(BIN)/ruff format --check spa tests benchmarks
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix spa tests benchmarks
	$(BIN)/ruff format spa tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# A reduced suite on another interpreter, with the dependency ranges of pyproject.toml resolved
# by pip there (the default torch build for that platform): `make test-python PY=python3.13`.
# PY is a path, a command on PATH, or a version pyenv holds; TORCH optionally pins torch.
PY ?= python3.13
TORCH ?=
PY_VENV = .venv-$(notdir $(PY))$(if $(TORCH),-torch)
REDUCED_SUITE ?= tests/adapters tests/pruning tests/tasks tests/deploy tests/contract \
	tests/cli tests/test_accounting.py tests/test_flops.py tests/test_dependencies.py

test-python:
	@py=$$(ls $${PYENV_ROOT:-$$HOME/.pyenv}/versions/*/bin/$(PY) 2>/dev/null | tail -n 1); \
	test -n "$$py" || py=$$(command -v $(PY)); \
	"$$py" -c "import sys; print(sys.version)" || { echo "no interpreter $(PY)"; exit 1; }; \
	test -x $(PY_VENV)/bin/python || "$$py" -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install --quiet --disable-pip-version-check $(if $(TORCH),"$(TORCH)") . \
		"$$(grep '^pytest==' requirements.txt)"
	$(PY_VENV)/bin/python -m pip list --disable-pip-version-check | grep -i -E '^(torch|transformers|numpy) '
	$(PY_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(REDUCED_SUITE)

# The full recovery-quality table (3 seeds, 16x16 digits, tiny Llama): long on 2 cores.
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/bench_quality.py --lm

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .ruff_cache
