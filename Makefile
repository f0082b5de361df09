# Set-up and the two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTBANK := $(VENV)/bin/artbank
STAMP := $(VENV)/.installed
DEMO := outputs/demo
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slurm bench format clean-demo venv

venv: $(STAMP)

# torch is pinned in the same pip command so that the CPU wheel on disk is used
# (an unpinned torch pulls several GB of CUDA packages). The demo's paintings come from
# unraphael, installed with --no-deps: its own requirements pull rembg and onnxruntime,
# none of which the demo uses.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -e ".[dev]"
	$(PY) -m pip install -q --no-deps unraphael==0.2.1
	touch $@

demo: $(STAMP)
	# 1. data: bundled paintings and photos -> WebDataset shards
	$(ARTBANK) demo-images --output $(DEMO)/images
	$(ARTBANK) shards build --input $(DEMO)/images --output $(DEMO)/shards \
		--size 96 --val-per-collection 2 --maxcount 4
	# 2. ArtBank: a prompt bank over both collections, then its embedding files
	$(ARTBANK) fit --config configs/quickstart.yaml
	$(ARTBANK) export --ckpt $(DEMO)/checkpoints/last.ckpt --output $(DEMO)/export
	# 3. InST: an inverter trained on one painting
	$(ARTBANK) demo-images --output $(DEMO)/inst-images --paintings 1
	$(ARTBANK) shards build --input $(DEMO)/inst-images --output $(DEMO)/inst-shards --size 96
	$(ARTBANK) fit --config configs/quickstart-inst.yaml
	# 4. stylize the photos with the bank and with the inverter, then a side-by-side grid
	$(ARTBANK) predict --config configs/stylize-quickstart.yaml
	$(ARTBANK) predict --config configs/stylize-quickstart.yaml \
		--model.init_args.bank null \
		--model.init_args.inverter $(DEMO)/inst/checkpoints/last.ckpt \
		--model.init_args.style_images '[$(DEMO)/inst-images/raphael/0_edinburgh_nat_gallery.jpg]' \
		--trainer.callbacks.init_args.output_dir $(DEMO)/stylized-inst
	$(ARTBANK) grid $(DEMO)/stylized/manifest.jsonl $(DEMO)/stylized-inst/manifest.jsonl \
		--output $(DEMO)/grid.png
	# 5. evaluation: metrics and a report over a small strength x guidance sweep
	$(ARTBANK) test --config configs/evaluate-quickstart.yaml
	@echo "demo outputs in $(DEMO)/: loss.png, checkpoints/, embeddings/, export/, inst/, stylized/, stylized-inst/, grid.png, report/"

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

# A real one-node SLURM cluster on loopback (installs slurm + munge from Debian if missing):
# DDP training preempted with SIGUSR1, requeued and resumed; stylization as a job array.
test-slurm: $(STAMP)
	bash tests/slurm/run.sh
