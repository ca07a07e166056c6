#!/usr/bin/env bash
# Holds the gateway's OpenAPI contract to a live mesh with Schemathesis:
# starts `mesh` (SQLite in a temp dir, every listener on a free loopback
# port), waits for GET /readyz, runs every Schemathesis check against the
# spec the gateway serves, and always stops the mesh and removes the temp dir.
#
#   bash .ci/schemathesis.sh [PATH_TO_MESH]      (default: target/debug/mesh)
#
# Knobs (environment): SCHEMATHESIS_SEED (42), SCHEMATHESIS_MAX_EXAMPLES (40),
# SCHEMATHESIS_TIMEOUT (900 s for the whole run), SCHEMATHESIS_REPORT_DIR
# (target/schemathesis: the JUnit report), SCHEMATHESIS_VENV (where the pinned
# Schemathesis is installed; reused when it already holds that version).
# Exits non-zero when Schemathesis finds a failure or cannot run.
set -euo pipefail

invoked_from=$PWD
cd "$(dirname "$0")/.."
repo=$PWD

# Schemathesis from PyPI, an exact version (the newest 4.x when pinned).
ST_VERSION=4.32.5
seed=${SCHEMATHESIS_SEED:-42}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-40}
run_timeout=${SCHEMATHESIS_TIMEOUT:-900}
report_dir=${SCHEMATHESIS_REPORT_DIR:-$repo/target/schemathesis}
venv=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/mesh-ci/schemathesis-$ST_VERSION}
ready_timeout=120
# Per request. The slowest documented answer is GET /run-blocking-task: its
# sleep (at most 5 s, the route's own limit) plus the time its task waits
# for a worker; 15 s leaves a margin. A request that takes longer is a
# finding (Schemathesis reports it as an error).
request_timeout=15
# `--checks all` includes max_response_time, whose limit is 10 s unless set:
# said here so it is not a hidden default. Slower answers fail the run.
max_response_time=10

step() { printf '\n=== %s\n' "$*"; }

mesh=${1:-target/debug/mesh}
case $mesh in
  /*) ;;
  *) if [ -n "${1:-}" ]; then mesh=$invoked_from/$mesh; else mesh=$repo/$mesh; fi ;;
esac
if [ ! -x "$mesh" ]; then
  echo "no mesh executable at $mesh (build it with: cargo build --bin mesh)" >&2
  exit 2
fi
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mesh-schemathesis.XXXXXX")
mesh_pid=
st_pid=
cleanup() {
  local rc=$?
  set +e
  if [ -n "$st_pid" ] && kill -0 "$st_pid" 2>/dev/null; then
    kill -TERM "$st_pid" 2>/dev/null # timeout passes it on to schemathesis
    wait "$st_pid" 2>/dev/null
  fi
  if [ -n "$mesh_pid" ] && kill -0 "$mesh_pid" 2>/dev/null; then
    # The launcher stops its children on SIGTERM (it gives each up to 20 s,
    # then kills it); past 60 s kill its whole process group.
    kill -TERM "$mesh_pid" 2>/dev/null
    local deadline=$((SECONDS + 60))
    while kill -0 "$mesh_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$mesh_pid" 2>/dev/null; then
      echo "mesh did not stop within 60 s; killing its process group" >&2
    fi
  fi
  # The launcher runs in its own session (setsid), so its pid is its
  # process group: this ends any child it left behind, and nothing else.
  if [ -n "$mesh_pid" ]; then kill -KILL -- "-$mesh_pid" 2>/dev/null; fi
  if [ "$rc" -ne 0 ] && [ -s "$tmp/mesh.log" ]; then
    echo "--- last lines of the mesh's log ---" >&2
    tail -n 40 "$tmp/mesh.log" >&2
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "schemathesis $ST_VERSION"
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null || true)" != "schemathesis, version $ST_VERSION" ]; then
  started=$SECONDS
  rm -rf "$venv"
  timeout 120 python3 -m venv "$venv"
  timeout 600 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
  echo "installed in $venv in $((SECONDS - started)) s"
fi
"$venv/bin/schemathesis" --version

step "mesh ($mesh)"
# The gateway runs as it should in production: API keys required
# (--auth keys), so Schemathesis checks the 401s too (ignored_auth: a
# request without the header must be refused), and rate limits on (high
# enough never to refuse Schemathesis, so the 429 and RateLimit headers are
# in the served contract and the limiter runs on every request). One throwaway admin key, made
# here; the key file holds only its SHA-256.
api_secret="mesh_ci-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
printf 'schemathesis %s read,write,admin\n' "$(printf '%s' "$api_secret" | sha256sum | cut -d' ' -f1)" >"$tmp/api-keys"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
gateway=http://127.0.0.1:$port
# A clean environment: no inherited MESH_*, GATEWAY_*, *_REDIS_URL or
# TASKS_FETCH_ALLOW can point the mesh at shared backends or widen `fetch`.
# --ephemeral-ports: every service and every admin listener (gateway's
# included) on a free loopback port, none of 8080, 9080, 9051-9054, 5005x.
# `fetch` tasks may reach only what the launcher allows by default: this
# gateway and its own "another service", both on loopback.
# TASKS_MAX_SLEEP_MS / TASKS_MAX_HASH_ROUNDS (tasks-service's --max-sleep-ms,
# --max-hash-rounds) bound what generated input can make a worker do: no
# `sleep` over 5 s (GET /run-blocking-task's own maximum, so the route's
# documented range is all accepted) and no `hash` over 200,000 rounds.
env -i PATH="$PATH" HOME="${HOME:-/root}" TMPDIR="${TMPDIR:-/tmp}" \
  RUST_LOG="${MESH_RUST_LOG:-warn}" \
  TASKS_MAX_SLEEP_MS=5000 TASKS_MAX_HASH_ROUNDS=200000 \
  GATEWAY_AUTH=keys GATEWAY_API_KEYS="$tmp/api-keys" \
  GATEWAY_RATE_LIMIT=anonymous=10000/s,read=10000/s,write=10000/s,admin=10000/s \
  setsid "$mesh" \
    --data-dir "$tmp/data" \
    --host 127.0.0.1 \
    --ephemeral-ports \
    --gateway-listen "127.0.0.1:$port" \
    </dev/null >"$tmp/mesh.out" 2>"$tmp/mesh.log" &
mesh_pid=$!

started=$SECONDS
deadline=$((SECONDS + ready_timeout))
until curl -fsS --max-time 2 -o /dev/null "$gateway/readyz" 2>/dev/null; do
  if ! kill -0 "$mesh_pid" 2>/dev/null; then
    echo "mesh exited before it was ready" >&2
    cat "$tmp/mesh.out" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "mesh not ready within $ready_timeout s ($gateway/readyz)" >&2
    exit 1
  fi
  sleep 0.2
done
echo "ready at $gateway in $((SECONDS - started)) s"
sed -n '/^admin listeners/,/^$/p' "$tmp/mesh.out"
grep 'fetch tasks may reach' "$tmp/mesh.out" || true

step "schemathesis run (all checks, seed $seed, at most $max_examples examples per operation)"
# Every check on every operation of the served spec. Two operations widen
# what positive_data_acceptance accepts (it expects 2xx, 404, 409, ... for
# schema-valid requests), each for a stated reason; every other check
# (no 5xx, response schemas, status codes and headers, negative data
# rejection, ...) still runs on them:
# - POST /tasks (submit_task): whether a task is acceptable also depends on
#   what no static schema can state: the payload each kind needs (free-form
#   JSON in the contract), the tasks service's run-time limits
#   (--max-sleep-ms, --max-hash-rounds, --fetch-allow), `run_at` and
#   `countdown_ms` given together, or a time more than 365 days ahead. Those
#   are documented 400s. And a reused Idempotency-Key with another body is
#   a documented 422 (Schemathesis sends the same key with different bodies).
#   POST /tasks:batch (submit_tasks) likewise, for each of its tasks.
# - POST /counters/{name}/increment: the same 422 for a reused key.
# One worker, so that a seed gives the same requests in the same order.
mkdir -p "$report_dir"
started=$SECONDS
rc=0
# In the background with `wait`, so that a signal to this script runs the
# clean-up at once (bash defers traps while a foreground command runs, and
# `timeout` sits in its own process group, out of reach of a group kill).
# Run from the temp dir with a config file of its own: no schemathesis.toml
# from the work tree applies, and Schemathesis's per-project cache (it keeps
# past failures in ./.schemathesis and replays them first in the next run)
# is off, so a run depends on the seed alone and writes nothing to the repo.
# max-stream-events: read one event of a server-sent event stream (the
# task's current state) rather than wait for more: GET /tasks/{id}/events on
# a task scheduled an hour ahead stays open (documented) until it runs.
cat >"$tmp/schemathesis.toml" <<'TOML'
max-stream-events = 1

[cache]
enabled = false

[[operations]]
include-operation-id = "submit_task"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "404", "409", "422", "429"]

[[operations]]
include-operation-id = "submit_tasks"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "404", "409", "422", "429"]

[[operations]]
include-operation-id = "increment_counter"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "404", "409", "422", "429"]
TOML
(cd "$tmp" && exec timeout "$run_timeout" "$venv/bin/schemathesis" --config-file "$tmp/schemathesis.toml" run "$gateway/openapi.json" \
  --url "$gateway" \
  --header "Authorization: Bearer $api_secret" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --seed "$seed" \
  --max-examples "$max_examples" \
  --request-timeout "$request_timeout" \
  --max-response-time "$max_response_time" \
  --workers 1 \
  --generation-database none \
  --output-sanitize false \
  --no-color \
  --report junit --report-dir "$report_dir") &
st_pid=$!
wait "$st_pid" || rc=$?
st_pid=
if [ "$rc" -eq 124 ]; then
  echo "schemathesis did not finish within $run_timeout s" >&2
fi
echo "schemathesis: exit $rc in $((SECONDS - started)) s (JUnit report in $report_dir)"
[ "$rc" -eq 0 ]
