#!/usr/bin/env bash
# Start the local PostgreSQL cluster if nothing answers on 127.0.0.1:5432 (Debian's
# pg_ctlcluster). Prints what it did; fails only if it tried and the server stayed down.
set -uo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ready; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "start-postgres: starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 50); do ready && exit 0; sleep 0.2; done
  echo "start-postgres: PostgreSQL $version did not come up on 127.0.0.1:5432" >&2
  exit 1
fi
echo "start-postgres: no PostgreSQL on 127.0.0.1:5432 and no pg_ctlcluster to start one; PostgreSQL tests will skip (or fail under CI=true)" >&2
exit 0
