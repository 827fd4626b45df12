#!/usr/bin/env bash
# Set up (if needed) and run every check CI runs: ruff, mypy strict, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PHAGE_SETUP_EXTRAS=test PHAGE_SETUP_PIP_EXTRAS=all,dev,transformers,training bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check src tests $([ -d bench ] && echo bench)
echo "== mypy (strict)"; .venv/bin/mypy
# Two workers; a failed test is retried once and reported as rerun (-rR lists them): the suite's
# real processes race timeouts on a loaded 2-core machine, and a second failure is a real one.
echo "== pytest"; exec .venv/bin/pytest -q -n "${PHAGE_TEST_WORKERS:-2}" --dist worksteal --reruns 1 -rfER --durations=25 "$@"
