# `make study` sets up a virtual environment in .venv and runs the default study (params.yaml);
# `make test` sets up the same environment and runs the test suite.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: setup offline-data study test bench paper-smoke

setup: $(VENV)/.installed

# Real Fashion-MNIST for machines without internet: Debian's package, used as a local mirror.
offline-data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "warning: could not install dataset-fashion-mnist (needs root); tests on real data will be skipped"

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[pipeline,slurm,test]"
	touch $@

study: setup offline-data
	$(VENV)/bin/snakemake --cores all

test: setup offline-data
	bash scripts/install-browser.sh
	$(PYTHON) -m pytest

# The paper's study (configs/paper.yaml) on stand-in data: every cell through the real Snakefile, in minutes on
# 2 cores (configs/paper-smoke.yaml); then a check that every table, figure and MLflow run is there. CI runs it.
paper-smoke: setup
	$(PYTHON) scripts/standin_data.py --out data/standin
	$(VENV)/bin/snakemake --cores all --configfile configs/paper-smoke.yaml
	$(PYTHON) -m pipeline.check --configfile configs/paper-smoke.yaml

# The CPU benchmarks (a quarter of an hour on 2 cores); bench/study.py and bench/gpu.py are run on their own.
bench: setup offline-data
	$(PYTHON) bench/training.py
	$(PYTHON) bench/data.py
	$(PYTHON) bench/scoring.py
	$(PYTHON) bench/inference.py
