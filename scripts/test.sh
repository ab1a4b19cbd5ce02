#!/usr/bin/env bash
# The whole test suite: lint, strict types, and pytest (root-only kernel tests run as root).
# A pytest run that collects no tests (exit code 5) fails this script like any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_debian_packages nft:nftables ip:iproute2 conntrack:conntrack iptables-restore:iptables \
    /usr/lib/python3/dist-packages/nftables/__init__.py:python3-nftables dot:graphviz
ensure_venv dev
echo "== ruff"; .venv/bin/ruff check src tests bench
echo "== mypy --strict"; .venv/bin/mypy --strict src/septum
echo "== pytest"; .venv/bin/python -m pytest "$@"
