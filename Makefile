# Two commands for a fresh machine (see README):
#   make demo   set up .venv and run the main job on the embedded models (HTML report)
#   make test   set up .venv and run the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# On the reference machine this is a CPU build on disk; elsewhere pick the build you need.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# data: files the notebooks and bt.datasets read; napari: the viewer; dev: test and docs tools
EXTRAS ?= dev,data,napari

.PHONY: setup demo test wheel-check lint docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if python3 -c "import torch" 2>/dev/null; then \
		echo "keeping the torch already installed for python3"; \
		python3 -m venv --system-site-packages $(VENV); \
	else \
		python3 -m venv $(VENV); \
	fi
	$(PY) -m pip install -q -U pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: setup
	$(PY) scripts/run_demo.py

test: setup
	$(PY) -m ruff check biomed_toolkit tests scripts benchmarks
	$(PY) -m pytest -q -rs --durations=15 $(PYTEST_ARGS)

# the built wheel (not editable) in a clean virtualenv runs the quick-start notebooks
wheel-check:
	bash .ci/wheel_check

docs: setup
	$(PY) -m sphinx -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) reports docs/_build
