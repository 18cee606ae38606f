# Quick start on a fresh machine:   make demo   |   make test
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv system-deps demo test bench clean

venv: $(STAMP)

# torch first, pinned to the CPU wheel (a bare `torch` would pull a multi-GB CUDA build)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,samples]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medforensics demo --out demo-output

# Debian dcmtk + chromium + chromium-driver, which the tests drive: installed when missing and permitted
# (root or passwordless sudo; MEDFORENSICS_NO_SYSTEM_INSTALL=1 turns it off); otherwise their tests are skipped
system-deps:
	bash scripts/system-deps.sh

test: $(STAMP) system-deps
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/timing/io_throughput.py
	$(PY) bench/timing/scan_throughput.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
