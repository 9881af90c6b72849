# hvdtrain — the two commands a fresh machine needs are `make demo` and `make test`.
# `make install` is idempotent: it builds Horovod once, then reuses the cached wheel.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH_VERSION := $(shell sed -n 's/^TORCH_VERSION = "\(.*\)"/\1/p' hvdtrain/__init__.py)
STAMP  := $(VENV)/.hvdtrain-installed

.PHONY: install demo test test-fast bench clean test-hosts-deps

install: $(STAMP)

$(STAMP): pyproject.toml hvdtrain/__init__.py hvdtrain/setup/horovod_build.py hvdtrain/patches/*.patch
	@echo "[hvdtrain install] creating $(VENV) and installing torch $(TORCH_VERSION), Horovod, hvdtrain"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check "torch==$(TORCH_VERSION)"
	@$(PY) -m hvdtrain.setup.horovod_build
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,tensorboard,report,export,mlflow]"
	@touch $(STAMP)
	@echo "[hvdtrain install] done: $(VENV)/bin/hvdtrain"

demo: install
	$(VENV)/bin/hvdtrain run digits-cnn --np 2

# Every test: those that start no horovodrun on two processes, then the real horovodrun runs one
# at a time (two at once would share 2 cores and time out); fails when either part fails.
test: install test-hosts-deps
	status=0; \
	$(VENV)/bin/python -m pytest -q -m "not horovod" -n 2 || status=1; \
	$(VENV)/bin/python -m pytest -q -m horovod || status=1; \
	exit $$status

# Everything that starts no horovodrun (every test that does carries the `horovod` marker), on two
# processes: the first half of `make test`.
test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not horovod" -n 2

bench: install test-hosts-deps
	$(VENV)/bin/python tests/bench/run_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Only `make test` needs these (never `make install` or `make demo`). The two-host tests run an sshd per network namespace, the Slurm tests a one-node Slurm (slurm-wlm
# 22.05 + munge, started by the tests themselves); install them from the system package manager
# when missing (root + apt only; elsewhere those tests are skipped with the reason).
test-hosts-deps:
	@if [ -x /usr/sbin/sshd ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "[hvdtrain install] installing openssh-server for the two-host tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2 >/dev/null) \
	    || echo "[hvdtrain install] could not install openssh-server: two-host tests will be skipped"; \
	else echo "[hvdtrain install] no sshd and no apt-get as root: two-host tests will be skipped"; fi
	@if command -v sbatch >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "[hvdtrain install] installing slurm-wlm and munge for the real-Slurm tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
	    || echo "[hvdtrain install] could not install slurm-wlm: real-Slurm tests will be skipped"; \
	else echo "[hvdtrain install] no Slurm and no apt-get as root: real-Slurm tests will be skipped"; fi
