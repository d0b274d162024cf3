#!/usr/bin/env bash
# Run the ghz load profiles against a dspy-pool server and save ghz's JSON reports.
#
#   clients/ghz/run.sh [--spawn] [HOST:PORT]      (default 127.0.0.1:50051)
#
# --spawn starts `dspy-pool serve --lm dummy` on HOST:PORT first and stops it on exit.
# Reports go to bench/results/ghz/<profile>.json (override with GHZ_REPORTS=dir).
# ghz exits 0 even when every call failed, so each JSON report is checked by
# check_report.py: any status other than OK, or no successful call, fails the run (exit 1).
# Exits 0 with a message when ghz is not on PATH (it is a Go binary this project
# cannot install from its registries): https://ghz.sh/docs/install
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
spawn=0
if [[ "${1:-}" == "--spawn" ]]; then spawn=1; shift; fi
target="${1:-127.0.0.1:50051}"
reports="${GHZ_REPORTS:-$root/bench/results/ghz}"   # bench/results/ is git-ignored
python="${PYTHON:-python3}"

if ! command -v ghz >/dev/null 2>&1; then
  echo "ghz is not on PATH; skipping the ghz profiles (install: https://ghz.sh/docs/install)"
  exit 0
fi

server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [[ "$spawn" == 1 ]]; then
  dspy-pool serve --listen "$target" --lm dummy --workers 2 --log-format json >"${TMPDIR:-/tmp}/dspy-pool-ghz.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 120); do
    if dspy-pool probe --target "$target" --timeout 1 >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  dspy-pool probe --target "$target" --timeout 2 || { echo "server did not become SERVING" >&2; exit 1; }
fi

"$python" "$here/register.py" --target "$target"
mkdir -p "$reports"
reports="$(cd "$reports" && pwd)"
cd "$root"   # ghz resolves "proto" and "import-paths" against the working directory (execute-proto.json)
status=0
for profile in execute execute-proto sessions; do
  report="$reports/$profile.json"
  echo "ghz: $profile -> $report"
  rm -f "$report"   # a stale report must not pass for this run's
  # the positional host overrides the config's "host"; -O/-o choose the JSON report
  if ! ghz --config "$here/$profile.json" -O json -o "$report" "$target"; then
    echo "ghz $profile failed to run" >&2
    status=1
  elif ! "$python" "$here/check_report.py" "$report"; then
    status=1
  fi
done
exit $status
