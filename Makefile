# Two commands do all set-up on a fresh machine (Python >= 3.10 with venv and pip):
#   make demo   — the end-to-end demo (creates .venv and installs the package on first use)
#   make test   — the test suite
#   make explore — the explorer web app (prints its local address)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# XLA on CPU allocates big temporaries every step: huge-page malloc saves ~30% (ad/utils.py).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: demo test bench install clean explore

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,explorer]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q

explore: $(STAMP)  # the explorer web app on 127.0.0.1 (docs/explorer.md); ARGS="--model RUN_DIR"
	$(PY) -m ad.interp.explorer $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.envs_throughput
	$(PY) -m benchmarks.ppo_throughput
	$(PY) -m benchmarks.ad_throughput

clean:
	rm -rf $(VENV) .pytest_cache
