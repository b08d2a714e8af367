# Set-up in one command each, on a machine with Python 3.10+ and make (see README.md):
#   make quickstart   install into .venv and run the main job on the bundled sample
#   make test         install the test extras into .venv and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# torch is installed only when the venv has none: the CUDA build where an NVIDIA driver answers,
# else the CPU build (about 200 MB instead of several GB of CUDA libraries). Pick another build with
#   make quickstart TORCH_PIP="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"
ifeq ($(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu),gpu)
TORCH_PIP ?= torch>=2.4
else
TORCH_PIP ?= torch>=2.4 --index-url https://download.pytorch.org/whl/cpu
endif

.PHONY: install install-dev quickstart test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "installing torch: $(TORCH_PIP)"; $(BIN)/python -m pip install --quiet $(TORCH_PIP); }
	$(BIN)/python -m pip install --quiet -e .

install-dev: install
	$(BIN)/python -m pip install --quiet -e '.[dev]'

quickstart: install
	$(BIN)/python examples/quickstart.py

test: install-dev
	cd $(CURDIR) && $(BIN)/python -m pytest
