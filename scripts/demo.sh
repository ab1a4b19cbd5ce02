#!/usr/bin/env bash
# Septum's main job on its embedded defaults: validate the example repository, run its
# assertions, compile every enforcer and explain a few flows. Nothing external is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_debian_packages nft:nftables dot:graphviz
ensure_venv ""
exec .venv/bin/septum demo "${1:-examples}"
