#!/usr/bin/env bash
# The whole test suite: lint, strict types, and pytest (root-only kernel tests run as root;
# the server's storage tests on SQLite and on a real PostgreSQL).
# A pytest run that collects no tests (exit code 5) fails this script like any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# PostgreSQL for the server's storage tests (tests/postgres.py runs a private cluster from
# /usr/lib/postgresql/<major>/bin; any cluster the package itself creates or starts is unused).
# The metapackage's copyright file stands for "installed": it depends on the server of the
# release's major version, and that path, unlike the binaries', has no version in it.
ensure_debian_packages nft:nftables ip:iproute2 conntrack:conntrack iptables-restore:iptables \
    /usr/lib/python3/dist-packages/nftables/__init__.py:python3-nftables dot:graphviz \
    /usr/share/doc/postgresql/copyright:postgresql
ensure_venv dev
echo "== ruff"; .venv/bin/ruff check src tests bench
echo "== mypy --strict"; .venv/bin/mypy --strict src/septum
echo "== pytest"; .venv/bin/python -m pytest "$@"
