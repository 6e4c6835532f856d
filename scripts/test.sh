#!/usr/bin/env bash
# Set up, make sure PostgreSQL is running on 127.0.0.1:5432, and run the whole test suite.
# Extra arguments go to pytest (for example tests/unit or -k loop).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/start-postgres.sh
exec .venv/bin/python -m pytest "$@"
