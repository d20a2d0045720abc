# Two commands on a fresh machine: `make demo` (install + the main job) and `make test` (install + all tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the release that has a working torchvision (timm needs it)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m sigma_ray.cli demo

# Debian's headless Chromium for the browser tests (tests/test_tune_sweep.py, tests/test_train_job.py)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] || { echo "the browser tests need Debian's chromium: sudo apt-get install chromium"; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) chromium
	$(PY) -m pytest -q -ra --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

clean:
	rm -rf $(VENV) runs outputs
