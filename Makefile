# Two commands for a fresh machine with Python 3.11, a C++ compiler and make:
#   make demo   distillation demo on a generated DOTA-format dataset (or DATA=<DOTA root>)
#   make test   the test suite
# Both run `make env` first, which creates .venv with the CPU reference stack.

PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
DATA ?=
DEMO_DIR ?= demo_outputs
PYTEST_ARGS ?=

.PHONY: env demo test clean-demo help

help:
	@echo "make env    create $(VENV) with the CPU reference stack (idempotent)"
	@echo "make demo   run the distillation demo (DATA=<DOTA root> to use real data)"
	@echo "make test   run the test suite"

env:
	@PYTHON=$(PYTHON) VENV=$(VENV) bash tools/misc/setup_env.sh

demo: env
	$(VENV_PYTHON) tools/demo/run_demo.py --out-dir $(DEMO_DIR) $(if $(DATA),--data-root $(DATA),)

test: env
	$(VENV_PYTHON) -m pytest tests $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
