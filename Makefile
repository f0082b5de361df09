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

demo: $(STAMP)
	# 1. data: world collections (striped, dotted, sketch) and world photographs -> shards
	$(ARTBANK) world images --output $(DEMO)/images --styles striped dotted sketch \
		--per-style 24 --photos 8
	$(ARTBANK) shards build --input $(DEMO)/images/collections --output $(DEMO)/shards \
		--size 32 --val-per-collection 2 --maxcount 8 --format png
	# 2. ArtBank: a prompt bank over the three collections on the world model, then its files
	$(ARTBANK) fit --config quickstart
	$(ARTBANK) export --ckpt $(DEMO)/checkpoints/last.ckpt --output $(DEMO)/export
	# 3. InST: an inverter trained on one world painting (dotted)
	$(ARTBANK) world images --output $(DEMO)/inst-images --styles dotted --per-style 1 \
		--photos 0 --seed 7
	$(ARTBANK) shards build --input $(DEMO)/inst-images/collections \
		--output $(DEMO)/inst-shards --size 32 --format png
	$(ARTBANK) fit --config quickstart-inst
	$(ARTBANK) export --ckpt $(DEMO)/inst/checkpoints/last.ckpt --output $(DEMO)/inst/export \
		--style-images $(DEMO)/inst-images/collections/dotted/0000.png
	# 4. stylize the photographs with the bank and with the inverter, then a side-by-side grid
	#    (AdaIN: each style starts from the latent statistics of its collection's first image)
	$(ARTBANK) predict --config stylize-quickstart \
		--model.init_args.adain true --model.init_args.adain_reference $(DEMO)/images/collections
	$(ARTBANK) predict --config stylize-quickstart \
		--model.init_args.bank null \
		--model.init_args.inverter $(DEMO)/inst/checkpoints/last.ckpt \
		--model.init_args.style_images '[$(DEMO)/inst-images/collections/dotted/0000.png]' \
		--model.init_args.prompt '*, {caption}' \
		--trainer.callbacks.init_args.output_dir $(DEMO)/stylized-inst
	$(ARTBANK) grid $(DEMO)/stylized/manifest.jsonl $(DEMO)/stylized-inst/manifest.jsonl \
		--output $(DEMO)/grid.png
	# 5. evaluation: the judges' style and content accuracy, CLIP metrics, a report
	$(ARTBANK) test --config evaluate-quickstart
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

# The papers' claims measured on the planted style world, 3 seeds per arm:
# outputs/study/study.json, curves.png, tradeoff.png (see the README's "Study" section).
study: $(STAMP)
	$(PY) bench/study.py --seeds 0 1 2 --output outputs/study

# A real one-node SLURM cluster on loopback (installs slurm + munge from Debian if missing):
# DDP training preempted with SIGUSR1, requeued and resumed; stylization as a job array.
test-slurm: $(STAMP)
	bash tests/slurm/run.sh
