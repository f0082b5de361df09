# Set-up and the two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTBANK := $(VENV)/bin/artbank
STAMP := $(VENV)/.installed
DEMO := outputs/demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slurm bench study format clean-demo venv

venv: $(STAMP)

# torch is pinned in the same pip command so that the CPU wheel on disk is used
# (an unpinned torch pulls several GB of CUDA packages).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -e ".[dev]"
	touch $@

# The whole quick start (`artbank demo`, also from a wheel): world data -> ArtBank and InST
# on the world model -> embedding files -> stylized photographs -> grid -> evaluation.
demo: $(STAMP)
	$(ARTBANK) demo --output $(DEMO)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-demo:
	rm -rf $(DEMO)

# Throughput side by side with the peers (tiny model, CPU); ends with "ratio lightning/bare: R".
bench: $(STAMP)
	$(PY) bench/throughput.py --preset tiny

# The papers' claims on the planted world, one footing: learning rates tuned on held-out
# worlds, 5 seeds (world sample, start, sampling), 95 % intervals:
# outputs/study/study.json, study.md, curves.png, tradeoff.png (see the README's "Study" section).
study: $(STAMP)
	$(PY) bench/study.py --seeds 0 1 2 3 4 --tuning-seeds 100 --output outputs/study

# A real one-node SLURM cluster on loopback (installs slurm + munge from Debian if missing):
# DDP training preempted with SIGUSR1, requeued and resumed; stylization as a job array.
test-slurm: $(STAMP)
	bash tests/slurm/run.sh
