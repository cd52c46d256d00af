#!/usr/bin/env bash
# Run the production stress test and print the lock report.
#
#   scripts/run_rlock_production_stress_test.sh DURATION WORKERS [--yes] [STRESS-TEST OPTIONS...]
#
# With no agent configured (no DD_AGENT_HOST / DD_TRACE_AGENT_URL / DD_API_KEY)
# it starts a local ddapm-test-agent on a free loopback port (installing it
# with pip if missing), points the test at it (DD_TRACE_AGENT_URL and
# --test-agent-url, so the uploaded profiles are read back and checked) and
# stops it afterwards. With an agent configured, profiles go there instead.
# --yes skips the confirmation, which is only asked when stdin is a terminal.
# Extra options go to scripts/rlock_production_stress_test.py (e.g.
# --capture-pct 100). The exit status is the stress test's.
set -euo pipefail

usage() {
    sed -n '3,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

[ $# -ge 2 ] || usage
DURATION=$1
WORKERS=$2
shift 2
YES=0
EXTRA=()
for arg in "$@"; do
    case "$arg" in
        --yes|-y) YES=1 ;;
        -h|--help) usage ;;
        *) EXTRA+=("$arg") ;;
    esac
done
[[ "$DURATION" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "DURATION must be a number of seconds, not '$DURATION'" >&2; exit 2; }
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || { echo "WORKERS must be a positive integer, not '$WORKERS'" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
OUTDIR=$(mktemp -d "${TMPDIR:-/tmp}/rlock-stress.XXXXXX")
PREFIX="$OUTDIR/rlock_stress_test"
AGENT_PID=

cleanup() {
    if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
        kill "$AGENT_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$AGENT_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$AGENT_PID" 2>/dev/null || true
        wait "$AGENT_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

confirm() {  # question
    [ "$YES" = 1 ] && return 0
    [ -t 0 ] || return 0
    local answer
    read -r -p "$1 [y/N] " answer
    case "$answer" in
        y|Y|yes|YES) return 0 ;;
        *) echo "aborted"; exit 1 ;;
    esac
}

free_ports() {  # count -> that many free loopback TCP ports, one per line
    "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
PY
}

wait_for_agent() {  # url pid seconds
    "$PYTHON" - "$1" "$2" "$3" <<'PY'
import os, sys, time, urllib.request
url, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("ddapm-test-agent exited during startup")
    try:
        with urllib.request.urlopen(url + "/info", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        time.sleep(0.2)
sys.exit("ddapm-test-agent did not answer on %s within %g s" % (url, limit))
PY
}

TEST_AGENT_ARGS=()
if [ -z "${DD_AGENT_HOST:-}" ] && [ -z "${DD_TRACE_AGENT_URL:-}" ] && [ -z "${DD_API_KEY:-}" ]; then
    confirm "No Datadog agent configured: start a local ddapm-test-agent and run the stress test for ${DURATION}s with ${WORKERS} workers?"
    if ! "$PYTHON" -c 'import ddapm_test_agent.agent' 2>/dev/null; then
        echo "installing ddapm-test-agent: $PYTHON -m pip install ddapm-test-agent"
        "$PYTHON" -m pip install -q --disable-pip-version-check ddapm-test-agent
    fi
    mapfile -t PORTS < <(free_ports 3)
    PORT=${PORTS[0]} OTLP_HTTP=${PORTS[1]} OTLP_GRPC=${PORTS[2]}
    AGENT_URL="http://127.0.0.1:$PORT"
    AGENT_LOG="$OUTDIR/test-agent.log"
    # The agent also opens OTLP ports (4317/4318 by default): free ones too,
    # so that several runs can share the machine.
    "$PYTHON" -c 'import sys; from ddapm_test_agent.agent import main; sys.argv[0] = "ddapm-test-agent"; sys.exit(main())' \
        --host 127.0.0.1 --port "$PORT" --otlp-http-port "$OTLP_HTTP" --otlp-grpc-port "$OTLP_GRPC" \
        >"$AGENT_LOG" 2>&1 &
    AGENT_PID=$!
    if ! wait_for_agent "$AGENT_URL" "$AGENT_PID" 30; then
        echo "--- $AGENT_LOG" >&2
        tail -n 20 "$AGENT_LOG" >&2 || true
        exit 1
    fi
    echo "ddapm-test-agent listening on $AGENT_URL (pid $AGENT_PID, log $AGENT_LOG)"
    export DD_TRACE_AGENT_URL="$AGENT_URL"
    TEST_AGENT_ARGS=(--test-agent-url "$AGENT_URL")
else
    if [ -n "${DD_TRACE_AGENT_URL:-}" ]; then
        target="agent $DD_TRACE_AGENT_URL"
    elif [ -n "${DD_AGENT_HOST:-}" ]; then
        target="agent $DD_AGENT_HOST:${DD_TRACE_AGENT_PORT:-8126}"
    else
        target="Datadog intake (agentless, site ${DD_SITE:-datadoghq.com})"
    fi
    confirm "Send lock profiles of a ${DURATION}s, ${WORKERS}-worker stress test to the $target?"
    echo "uploading to the $target"
fi

status=0
"$PYTHON" "$ROOT/scripts/rlock_production_stress_test.py" --duration "$DURATION" --workers "$WORKERS" \
    --output "$PREFIX" ${TEST_AGENT_ARGS[@]+"${TEST_AGENT_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} || status=$?

echo
echo "=== python -m ddlock report $PREFIX"
if ls "$PREFIX".*.pprof >/dev/null 2>&1; then
    "$PYTHON" -m ddlock report "$PREFIX" --svg "$OUTDIR/lock-wait.svg" || { [ "$status" -ne 0 ] || status=1; }
else
    echo "no pprof files were written under $PREFIX"
    [ "$status" -ne 0 ] || status=1
fi
if [ "$status" -eq 0 ]; then
    echo "stress test PASSED (files in $OUTDIR)"
else
    echo "stress test FAILED (exit $status; files in $OUTDIR)"
fi
exit "$status"
