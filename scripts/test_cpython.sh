#!/usr/bin/env bash
# make test-cpython: CPython's own regression suites under ddlock at 100%
# capture (python -m ddlock.run, as a user profiles a program), judged
# against the same suites run natively.
#
#   scripts/test_cpython.sh [VERSION...]        (default: 3.9 3.10 3.11 3.12 3.13)
#   CPYTHON_SUITES="test_thread ..."            (default: below)
#
# Each version runs the suites under ddlock first, with a JUnit report of
# every test case. Only when some case fails there are the suites that hold
# failing cases run natively, and the run fails when a case fails under
# ddlock but not natively, or ran natively and not under ddlock (a failure
# native CPython has too, e.g. a flaky timing test on a loaded machine, is
# reported, not counted). The in-place
# extension of each version is built first (make test-all's builds).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pythons.sh
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${DEFAULT_PYVERSIONS[@]}")
suites=(${CPYTHON_SUITES:-test_thread test_threading test_queue test_asyncio.test_locks test_logging test_concurrent_futures})
out="$PWD/build/cpython-tests"
mkdir -p "$out"
failed=()
for v in "${versions[@]}"; do
    py=$(require_python "$v" test-cpython) || { failed+=("$v(missing)"); continue; }
    have=()
    for s in "${suites[@]}"; do
        if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('test.' + sys.argv[1]) is None)" "$s" 2>/dev/null; then
            have+=("$s")
        else
            echo "test-cpython: $v has no test.$s (not installed): skipped"
        fi
    done
    [ ${#have[@]} -gt 0 ] || { failed+=("$v(no suites)"); continue; }
    "$py" setup.py -q build_ext --inplace --build-temp "build/tmp-$v" >"build/cpython-build-$v.log" 2>&1 \
        || { cat "build/cpython-build-$v.log"; failed+=("$v(build)"); continue; }
    t0=$SECONDS
    echo "=== CPython $v: ${have[*]} under ddlock (100% capture)"
    rm -f "$out/ddlock-$v.xml" "$out/native-$v.xml"
    # the suites' own output goes to a log; the verdict is judged per case
    (cd /tmp && PYTHONPATH="$OLDPWD" DD_PROFILING_UPLOAD_ENABLED=false \
        "$py" -m ddlock.run --capture-pct 100 "$py" -m test --junit-xml "$out/ddlock-$v.xml" \
        "${have[@]}") >"$out/ddlock-$v.log" 2>&1
    rc=$?
    if [ ! -s "$out/ddlock-$v.xml" ]; then
        tail -n 30 "$out/ddlock-$v.log"
        echo "test-cpython: $v under ddlock produced no report (exit $rc)"
        failed+=("$v")
        continue
    fi
    bad=$("$py" scripts/junit_failures.py "$out/ddlock-$v.xml" --modules)
    if [ -n "$bad" ]; then
        echo "--- failing under ddlock, re-run natively: $bad"
        (cd /tmp && "$py" -m test --junit-xml "$out/native-$v.xml" $bad) >"$out/native-$v.log" 2>&1
        if ! "$py" scripts/junit_failures.py "$out/ddlock-$v.xml" --not-in "$out/native-$v.xml"; then
            tail -n 40 "$out/ddlock-$v.log"
            failed+=("$v")
        fi
    fi
    "$py" scripts/junit_failures.py "$out/ddlock-$v.xml" --summary
    echo "=== CPython $v: $((SECONDS - t0)) s"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-cpython: FAILED on: ${failed[*]}"
    exit 1
fi
echo "test-cpython: CPython's suites behave under ddlock as natively on ${versions[*]}"
