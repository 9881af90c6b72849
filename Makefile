# hvdtrain — the two commands a fresh machine needs are `make demo` and `make test`.
# `make install` is idempotent: it builds Horovod once, then reuses the cached wheel.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_VERSION := $(shell sed -n 's/^TORCH_VERSION = "\(.*\)"/\1/p' hvdtrain/__init__.py)
STAMP  := $(VENV)/.hvdtrain-installed

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml hvdtrain/__init__.py hvdtrain/horovod_build.py hvdtrain/patches/*.patch
	@echo "[hvdtrain install] creating $(VENV) and installing torch $(TORCH_VERSION), Horovod, hvdtrain"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check "torch==$(TORCH_VERSION)"
	@$(PY) -m hvdtrain.horovod_build
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)
	@echo "[hvdtrain install] done: $(VENV)/bin/hvdtrain"

demo: install
	$(VENV)/bin/hvdtrain run digits-cnn --np 2

test: install
	$(VENV)/bin/python -m pytest -q

bench: install
	$(VENV)/bin/python tests/bench/run_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
