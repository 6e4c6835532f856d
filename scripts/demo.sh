#!/usr/bin/env bash
# The main job: set up, start the demo upstream services, run the example loan-approval pack
# end to end on a local Ray with the embedded SQLite database, and print the result.
# Any extra arguments go to `cortx-workflow run` (for example --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PORT="${DEMO_PORT:-8700}"
health() { .venv/bin/python -c "import httpx,sys; sys.exit(0 if httpx.get('http://127.0.0.1:$PORT/_demo/health', timeout=1).status_code == 200 else 1)" 2>/dev/null; }
started=""
if ! health; then
  # The first call to the income check fails once, so the run shows a retry with backoff.
  .venv/bin/cortx-workflow demo-services --port "$PORT" --fail /validation/v1/income=1 >/dev/null 2>.demo-services.log &
  started=$!
  trap 'kill $started 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do health && break; sleep 0.1; done
  health || { echo "demo: the demo services did not start on port $PORT (see .demo-services.log)" >&2; exit 1; }
fi
.venv/bin/cortx-workflow run examples/loan-approval.yaml --inputs examples/loan-approval.inputs.json "$@"
