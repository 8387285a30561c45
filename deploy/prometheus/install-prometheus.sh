#!/usr/bin/env bash
# Installs the Prometheus server and promtool (Debian package `prometheus`) when either is
# missing from PATH. CI runs it before the tests; tests/integration/test_prometheus.py needs
# both. Idempotent; needs root (or sudo) and apt-get.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    prometheus --version 2>&1 | head -n 1
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install-prometheus.sh: no apt-get here; install Prometheus (server and promtool)" \
        "from https://prometheus.io/download/ and put both on PATH" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends prometheus
prometheus --version 2>&1 | head -n 1
