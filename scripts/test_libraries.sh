#!/usr/bin/env bash
# make test-libraries: real libraries' own tests under python -m ddlock.run
# (100% capture), each judged against the same run natively (issue 23):
#   - dill's whole test suite (python -m dill.tests: lock pickling, the
#     registered types, queues and logging handlers holding locks),
#   - gevent's test__monkey_logging (logging's locks re-created by
#     gevent's patching must exclude greenlets),
#   - a trio.run smoke test with threads, locks and trio.to_thread.
#
#   scripts/test_libraries.sh [VERSION...]       (default: 3.11 3.13)
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pythons.sh
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.11 3.13)
out="$PWD/build/library-tests"
mkdir -p "$out"
repo="$PWD"
failed=()

TRIO_SMOKE='
import threading, trio
shared_lock = threading.Lock()
counter_rlock = threading.RLock()
def blocking_work(n):
    with shared_lock:
        with counter_rlock:
            return n * 2
async def main():
    results = []
    async with trio.open_nursery() as nursery:
        for i in range(8):
            async def one(i=i):
                results.append(await trio.to_thread.run_sync(blocking_work, i))
            nursery.start_soon(one)
    return sorted(results)
print("trio", trio.run(main))
'

# run NAME PY ARGS...: the command natively and under ddlock; prints both
# outcomes, fails when they differ. The judged outcome is the exit status
# and the lines for which $filter prints something (default: all stdout).
compare() {
    local name=$1 v=$2 py=$3 filter=$4
    shift 4
    (cd /tmp && env -u PYTHONPATH "$py" "$@") >"$out/$name-native-$v.log" 2>&1
    local rn=$?
    (cd /tmp && PYTHONPATH="$repo" DD_PROFILING_UPLOAD_ENABLED=false \
        "$py" -m ddlock.run --capture-pct 100 "$py" "$@") >"$out/$name-ddlock-$v.log" 2>&1
    local rd=$?
    local sn sd
    sn=$(eval "$filter" <"$out/$name-native-$v.log")
    sd=$(eval "$filter" <"$out/$name-ddlock-$v.log")
    if [ "$rn" != "$rd" ] || [ "$sn" != "$sd" ]; then
        echo "  $name: DIFFERS (native exit $rn: $sn | ddlock exit $rd: $sd)"
        tail -n 20 "$out/$name-ddlock-$v.log"
        return 1
    fi
    echo "  $name: as natively (exit $rn${sn:+: $sn})"
}

for v in "${versions[@]}"; do
    py=$(require_python "$v" test-libraries) || { failed+=("$v(missing)"); continue; }
    scripts/deps.sh --python "$py" >/dev/null || { failed+=("$v(deps)"); continue; }
    "$py" setup.py -q build_ext --inplace --build-temp "build/tmp-$v" >"build/libraries-build-$v.log" 2>&1 \
        || { cat "build/libraries-build-$v.log"; failed+=("$v(build)"); continue; }
    t0=$SECONDS
    echo "=== CPython $v: $("$py" -c 'import dill, gevent, trio; print("dill", dill.__version__, "gevent", gevent.__version__, "trio", trio.__version__)')"
    ok=1
    # dill's runner prints one "." (passed) or "F" per test file
    compare dill "$v" "$py" "grep -E '^[.F]+$' | tr -d '\n'" -m dill.tests || ok=0
    # a script: it raises (exit 1) when a re-created lock is not gevent's
    compare gevent-monkey-logging "$v" "$py" "cat >/dev/null" \
        -m gevent.tests.test__monkey_logging || ok=0
    compare trio "$v" "$py" "grep '^trio '" -c "$TRIO_SMOKE" || ok=0
    [ $ok = 1 ] || failed+=("$v")
    echo "=== CPython $v: $((SECONDS - t0)) s"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-libraries: FAILED on: ${failed[*]}"
    exit 1
fi
echo "test-libraries: dill, gevent and trio behave under ddlock as natively on ${versions[*]}"
