# `make demo` and `make test` each set up a virtual environment on first use, from requirements.lock:
# the exact versions that passed the suite. pyproject.toml keeps ranges for library users; `make lock`
# re-resolves those ranges into the lock (see README, "Reproducible installs").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Python 3.11+: never put the working directory on sys.path, so the repo's `kernels/`, `train/` and
# `collect/` folders cannot shadow installed packages of those names (they install as oirl_fast.*).
export PYTHONSAFEPATH := 1

.PHONY: install lock demo study test bench clean docs

install: $(STAMP)

# torch==2.13.0 first: it resolves to the CPU wheel already on the machine,
# while the unpinned range in pyproject.toml would pull gigabytes of CUDA.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' $(LOCK))"
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r $(LOCK) -e '.[all,dev]'
	touch $(STAMP)

# Re-resolve pyproject.toml's ranges (with the extras make installs: all, dev) into $(LOCK). The torch constraint keeps the
# CPU wheel (the PyPI one pulls CUDA); run `make test` afterwards and commit the lock only if it passes.
lock:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip-tools
	printf 'torch==2.13.0+cpu\n' > $(VENV)/torch-cpu.txt
	$(VENV)/bin/pip-compile -q --extra all --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
	    --no-emit-find-links -c $(VENV)/torch-cpu.txt -o $(LOCK) pyproject.toml
	rm -f $(STAMP)

# One dataset end to end in a few minutes (oirl demo --quick, into oirl-demo/); `make study` is the full
# study whose summary.json the results tables are generated from, into its own folder so that neither
# run overwrites the other's outputs.
demo: $(STAMP)
	$(VENV)/bin/oirl demo --quick

study: $(STAMP)
	$(VENV)/bin/oirl demo --json --out oirl-study

# The pytest script, not `python -m pytest`, so the working directory is not put on sys.path.
test: $(STAMP)
	$(VENV)/bin/pytest -q tests

# The docs site (mkdocs.yml) into site/: --strict fails on a broken link or anchor; the CLI and API
# pages are generated from the code at build time, the results pages from docs/results/tables/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/score_throughput.py --quick

clean:
	rm -rf oirl-demo oirl-study .pytest_cache build site *.egg-info
