#!/usr/bin/env bash
# Set up (if needed) and run `phage demo`: a coordinator and two nodes on loopback doing real work.
set -euo pipefail
cd "$(dirname "$0")/.."
PHAGE_SETUP_PIP_EXTRAS=all,transformers bash scripts/setup.sh
exec .venv/bin/phage demo "$@"
