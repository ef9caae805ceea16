# Set-up and checks. Every target installs what it needs by itself.
#   make quickstart  venv + package (no dev extra) + Fashion-MNIST, the quickstart sweep on
#                    local Ray, plots
#   make test        venv + package (editable, dev extra) + pytest (TEST_WORKERS processes)
#   make lint        ruff
#   make benchmark   benchmarks/certify_speed.py and train_step_speed.py
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# This machine carries these two releases on disk; elsewhere override, e.g. `make test TORCH_PIN=`.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install data quickstart test lint benchmark

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN) -e '.[dev]'
	touch $@ $(VENV)/.installed-base

# The package without the dev extra (what the quickstart needs); the dev install includes it.
$(VENV)/.installed-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN) -e .
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST: Debian's dataset-fashion-mnist where apt is usable, else torchvision's download
# into ./data. Failure here is not fatal for `make test`: the real-data tests then skip.
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
data: $(VENV)/.installed-base
	@if [ -f $(FMNIST) ] || [ -f data/FashionMNIST/raw/t10k-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist || \
	  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	else \
	  $(PY) -c "from smoothadv.trainers import load_dataset as l; [l('fashion_mnist', s, download=True) for s in ('train', 'test')]"; \
	fi

# The main job: a small real SmoothAdv sweep (configs/quickstart.yaml) on the embedded local Ray,
# then the analysis report. Re-running continues an interrupted sweep instead of starting over.
SWEEPS ?= sweeps
quickstart: data
	if [ -f $(SWEEPS)/quickstart/sweep.yaml ]; then \
	  $(VENV)/bin/smoothadv sweep resume $(SWEEPS)/quickstart; \
	else \
	  $(VENV)/bin/smoothadv sweep run configs/quickstart.yaml --storage $(SWEEPS); \
	fi
	$(VENV)/bin/smoothadv analyze $(SWEEPS)/quickstart -o $(SWEEPS)/quickstart/report

# Two test processes, each taking whole files (module fixtures such as the S3 server and the
# Ray clusters stay in one process): a test spends most of its time waiting on Ray and its
# subprocesses, so two overlap on 2 cores. TEST_WORKERS=0 runs them in this process. Tests
# marked serial (the multi-node cluster, whose node-death detection is timing-bound) run
# afterwards, alone.
TEST_WORKERS ?= 2
test: install
	-@$(MAKE) --no-print-directory data
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(PY) -m pytest -q -m serial

lint: install
	$(VENV)/bin/ruff check .

benchmark: install
	$(PY) benchmarks/certify_speed.py
	$(PY) benchmarks/train_step_speed.py
