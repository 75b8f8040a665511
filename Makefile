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

# OpenMP keeps its default wait policy: PASSIVE (threads sleep between ops) adds a wake-up to
# every op and doubled mobilenet_v2's batch-1 time on a quiet machine (docs/latency.md), which is
# not what a deployed model sees. On a machine shared with other jobs, set it yourself.
demo: $(VENV)/.installed
	$(PY) -m fairfx.apps.demo
