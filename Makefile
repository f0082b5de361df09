# Set-up and the two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTBANK := $(VENV)/bin/artbank
STAMP := $(VENV)/.installed
DEMO := outputs/demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint format clean-demo venv

venv: $(STAMP)

# torch is pinned in the same pip command so that the CPU wheel on disk is used
# (an unpinned torch pulls several GB of CUDA packages). open-clip-torch (tokenizer
# vocabulary) and unraphael (demo paintings) go in with --no-deps: their own
# requirements pull torchvision and a CUDA torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -e ".[dev]"
	$(PY) -m pip install -q --no-deps open-clip-torch==3.3.0 unraphael==0.2.1
	touch $@

demo: $(STAMP)
	$(ARTBANK) demo-images --output $(DEMO)/images
	$(ARTBANK) shards build --input $(DEMO)/images --output $(DEMO)/shards \
		--size 96 --val-per-collection 2 --maxcount 4
	$(ARTBANK) fit --config configs/quickstart.yaml
	$(ARTBANK) export --ckpt $(DEMO)/checkpoints/last.ckpt --output $(DEMO)/export
	@echo "demo outputs in $(DEMO)/: loss.png, checkpoints/, embeddings/, export/"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-demo:
	rm -rf $(DEMO)
