#!/usr/bin/env bash
# The main job: set up, start the demo upstream services, run the example loan-approval pack
# end to end on a local Ray with the embedded SQLite database, and print the result.
# Any extra arguments go to `cortx-workflow run` (for example --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The example's registry (examples/services.yaml) points at 127.0.0.1:8700.
PORT=8700
health() { .venv/bin/python -c "import httpx,sys; sys.exit(0 if httpx.get('http://127.0.0.1:$PORT/_demo/health', timeout=1).status_code == 200 else 1)" 2>/dev/null; }
if health; then
  # Demo services are already up (started by hand or an earlier demo); arm the same one-off
  # failure of the income check so the run shows its retry. POST replaces the whole list:
  # keep the faults someone else armed on other paths.
  echo "demo: using the demo services already running on 127.0.0.1:$PORT" >&2
  .venv/bin/python - "$PORT" <<'PY'
import sys

import httpx

url = f"http://127.0.0.1:{sys.argv[1]}/_demo/faults"
kept = [
    {k: v for k, v in fault.items() if k != "calls"}
    for fault in httpx.get(url, timeout=5).json()
    if fault.get("path") != "/validation/v1/income"
]
httpx.post(url, json=[*kept, "/validation/v1/income=1"], timeout=5).raise_for_status()
PY
else
  # The first call to the income check fails once, so the run shows a retry with backoff.
  log="$(mktemp -t cortx-demo-services.XXXXXX.log)"
  .venv/bin/cortx-workflow demo-services --port "$PORT" --fail /validation/v1/income=1 >/dev/null 2>"$log" &
  started=$!
  trap 'kill $started 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do health && break; sleep 0.1; done
  health || { echo "demo: the demo services did not start on port $PORT:" >&2; cat "$log" >&2; exit 1; }
fi
.venv/bin/cortx-workflow run examples/loan-approval.yaml --inputs examples/loan-approval.inputs.json "$@"
