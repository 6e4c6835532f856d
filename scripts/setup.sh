#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install the project with the tested pins (constraints.txt).
# Re-running is cheap: it reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "setup: $PY not found; install Python 3.11 or newer (or set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup: $("$PY" --version 2>&1) is too old; Python 3.11 or newer is needed (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing cortx-workflow and its pinned dependencies into .venv (about a minute)" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# promtool (Debian's prometheus package) checks and tests the alerting rules in
# deploy/prometheus; only the tool is wanted, so the service the package enables is stopped.
if ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing promtool (apt package prometheus)" >&2
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if command -v systemctl >/dev/null 2>&1; then
      $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    $SUDO service prometheus stop >/dev/null 2>&1 || true
  else
    echo "setup: promtool not found and apt-get is not available; install Prometheus' promtool to run tests/unit/test_alert_rules.py" >&2
  fi
fi
