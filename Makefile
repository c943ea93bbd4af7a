# One command to set up and run the demo, one to set up and run the tests (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
# timm needs torchvision, whose PyPI wheels only import beside torch 2.14.1 (a CUDA build that also runs on CPU):
# timm-based checks therefore live in their own venv so they never swap the CPU torch of the main one.
TIMM_VENV ?= .venv-timm

.PHONY: setup fashion-data setup-timm demo test test-fast test-main test-timm lint clean

setup: $(VENV)/.installed fashion-data

# Fashion-MNIST (`--data fashion`) is Debian's dataset-fashion-mnist; installed where we are root, else a note
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fashion-data:
	@if [ ! -f $(FASHION) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; fi
	@[ -f $(FASHION) ] || echo "note: dataset-fashion-mnist is not installed (--data fashion and its tests are unavailable)"

# The CPU torch wheel is installed first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,tflite,pretrained]' torch==2.13.0
	touch $@

setup-timm: $(TIMM_VENV)/.installed

$(TIMM_VENV)/.installed: pyproject.toml
	python3 -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install -q --upgrade pip
	$(TIMM_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(TIMM_VENV)/bin/python -m pip install -q -e '.[dev,timm]' torch==2.14.1 torchvision==0.29.1
	touch $@

demo: setup
	$(VENV)/bin/edgeconv demo

test: lint test-main test-timm

test-main: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

lint: setup
	$(VENV)/bin/ruff check edgeconv tests benchmarks
	$(VENV)/bin/ruff format --check edgeconv tests benchmarks

test-timm: setup-timm
	$(TIMM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m timm tests/test_timm.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) runs .pytest_cache
