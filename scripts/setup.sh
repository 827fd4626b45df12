#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: OS packages, a virtualenv in .venv, phage installed editable.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v runsc >/dev/null || need_apt+=(runsc)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)        # per-workspace scratch volumes
command -v setpriv >/dev/null || need_apt+=(util-linux)          # setpriv, unshare, mount, losetup
if [ "${PHAGE_SETUP_EXTRAS:-}" = "test" ]; then
  command -v git >/dev/null || need_apt+=(git)
  command -v curl >/dev/null || need_apt+=(curl)            # seed 002's curl flows and curl -N chat tests
  command -v chromium >/dev/null || need_apt+=(chromium)      # the dashboard's browser tests (Playwright)
  command -v promtool >/dev/null || need_apt+=(prometheus)    # promtool checks the /metrics output
  # the store and integration tests also run on a real PostgreSQL server (phage.testing_postgres)
  { command -v initdb && command -v pg_ctl; } >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || need_apt+=(postgresql)
  command -v certutil >/dev/null || need_apt+=(libnss3-tools)  # the dashboard test trusts the pool CA in Chromium
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "phage setup: installing OS packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras="${PHAGE_SETUP_PIP_EXTRAS:-}"
stamp=".venv/.phage-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
