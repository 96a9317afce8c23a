# `make test` and `make train` create or reuse .venv in the repo root.
# torch: on a machine without an NVIDIA GPU we pin torch==2.13.0 (a local CPU wheel on the project's machines);
# elsewhere set TORCH_INDEX_URL, e.g. make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ddpo-env-installed
TORCH_INDEX_URL ?=
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

.PHONY: venv test test-quick lint train gpu-bundle

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

# everything but the tests marked slow (processes, torchrun, compile, benchmark scripts)
test-quick: lint
	$(PY) -m pytest -q -m "not slow"

# DDPO-IS on the embedded default model, JPEG compressibility (configs/make_train.toml): about 10 minutes on 2 CPU
# cores; PNGs, metrics and checkpoints in runs/train
train: $(STAMP)
	$(PY) -m agents.job.cli train --config configs/make_train.toml --output-dir runs/train --overwrite

# the wheels an offline GPU machine's image lacks (diffusers, gymnasium, stable-baselines3 and their needs), at the
# versions installed in $(VENV), into .whl/ (ignored; fails over 60 MiB); prints the device call that installs them
# and runs benchmarks/gpu_smoke.sh
gpu-bundle: $(STAMP)
	$(PY) -m benchmarks.gpu_bundle
