# Set-up in one command each, on a machine with Python 3.10+ and make (see README.md):
#   make quickstart   install into .venv and run the main job on the bundled sample
#   make test         install the test extras into .venv and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# torch is installed only when the venv has none: the CUDA build where an NVIDIA driver answers,
# else the CPU build (0.9 GB installed instead of 5.7 GB with the CUDA libraries: benchmarks/disk_space.py).
# Pick another build with
#   make quickstart TORCH_PIP="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"
# Where the index in TORCH_PIP does not answer, tools/ensure_torch.py says so within about 30 s.
ifeq ($(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu),gpu)
TORCH_PIP ?= 'torch>=2.4'
else
TORCH_PIP ?= 'torch>=2.4' --index-url https://download.pytorch.org/whl/cpu
endif

.PHONY: install install-dev quickstart test docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	@$(BIN)/python tools/ensure_torch.py -- $(TORCH_PIP)
	@echo "installing webdino-seg and its dependencies into $(VENV) (about 0.7 GB)"
	$(BIN)/python -m pip install --progress-bar on -e .

install-dev: install
	@echo "installing the test extras into $(VENV) (about 0.8 GB more)"
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'

quickstart: install
	$(BIN)/python examples/quickstart.py

test: install-dev
	cd $(CURDIR) && $(BIN)/python -m pytest

# the documentation site, built from docs/ into site/ (opens from disk; --strict: a broken link or anchor fails)
docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
