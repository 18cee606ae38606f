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

# speed and memory on this machine: decode limit, scan images/s (default model, BTD), RSS at 1k/10k files,
# service requests/s and latency at 1/8/32 clients, DICOM receiver instances/s (JSON + Markdown in bench/results/)
bench: $(STAMP) system-deps
	$(PY) bench/timing/scan_speed.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache
