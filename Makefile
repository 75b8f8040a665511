# Two entry points, each setting itself up on a clean machine:
#   make demo   - the main job (train on real digits, compress, export, report)
#   make test   - lint + format check + the fast test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision come first so pip takes the local CPU-capable wheels; override to use others.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test demo zoo slow setup

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $@

setup: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/ruff check fairfx tests benchmarks
	$(VENV)/bin/ruff format --check fairfx tests benchmarks
	$(PY) -m pytest -q

slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

zoo: $(VENV)/.installed
	$(PY) -m fairfx.apps.zoo

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning workers make
# every small op wait for a preempted thread, and the demo's latency figures would measure that.
demo: $(VENV)/.installed
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m fairfx.apps.demo
