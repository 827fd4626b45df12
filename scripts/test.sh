#!/usr/bin/env bash
# Set up (if needed) and run every check CI runs: ruff, mypy strict, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PHAGE_SETUP_EXTRAS=test PHAGE_SETUP_PIP_EXTRAS=all,dev,transformers,training bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check src tests $([ -d bench ] && echo bench)
echo "== mypy (strict)"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/pytest -q "$@"
