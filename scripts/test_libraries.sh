#!/usr/bin/env bash
# make test-libraries: real libraries' own tests under python -m ddlock.run
# (100% capture), each judged against the same run natively (issue 23):
#   - dill's whole test suite (python -m dill.tests: lock pickling, the
#     registered types, queues and logging handlers holding locks),
#   - gevent's test__monkey_logging (logging's locks re-created by
#     gevent's patching must exclude greenlets),
#   - a trio.run smoke test with threads, locks and trio.to_thread,
#   - urllib3's connection-pool tests (test/with_dummyserver/
#     test_connectionpool.py against its trio-based hypercorn dummy server,
#     and test/test_connectionpool.py) from the sdist of URLLIB3_VERSION,
#     with pytest in a venv per version, build/urllib3-venv-X.Y (made with
#     python -m venv, reused; urllib3 and its pinned test dependencies
#     installed there, not in the pyenv interpreter). Judged per case by
#     pytest's JUnit reports (scripts/junit_failures.py): a case failing
#     under ddlock but not natively, or not run under ddlock, fails the step;
#     the ddlock run's profile must also hold urllib3's pool queue lock.
#     A full garbage collection after each test (scripts/
#     pytest_collect_garbage.py, both ways) makes a leaked socket's
#     ResourceWarning land in the same test natively and under ddlock.
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

# The urllib3 release whose sdist's tests run (it needs Python 3.10+).
URLLIB3_VERSION=2.8.0
# Its [dependency-groups] test, at the versions of its uv.lock, except
# hypercorn: upstream uses a git fork of 0.15.0, unreachable here, so PyPI's
# 0.15.0 (cases failing natively because of it are not counted); plus
# trustme, which test/conftest.py imports (upstream's dev group has it).
URLLIB3_TEST_DEPS=("anyio[trio]==4.13.0" h2==4.3.0 httpx==0.28.1 hypercorn==0.15.0
                   pysocks==1.7.1 pytest==9.1.1 pytest-socket==0.7.0 pytest-timeout==2.4.0
                   quart==0.20.0 quart-trio==0.12.0 trio==0.33.0 trustme==1.2.1)
# The whole of both files: 227 cases, about 15 s a run.
URLLIB3_TESTS=(test/with_dummyserver/test_connectionpool.py test/test_connectionpool.py)
urllib3_tarball="build/urllib3-$URLLIB3_VERSION.tar.gz"
urllib3_src="$repo/build/urllib3-$URLLIB3_VERSION"

# urllib3_sdist PY: build/urllib3-$URLLIB3_VERSION.tar.gz downloaded (once)
# and unpacked in build/urllib3-$URLLIB3_VERSION
urllib3_sdist() {
    local py=$1 tmp
    if [ ! -s "$urllib3_tarball" ]; then
        "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
            -d build "urllib3==$URLLIB3_VERSION" >build/urllib3-download.log 2>&1 \
            || { cat build/urllib3-download.log; return 1; }
    fi
    [ -f "$urllib3_src/pyproject.toml" ] && return 0
    tmp=$(mktemp -d build/urllib3-unpack.XXXXXX) || return 1
    tar -xzf "$urllib3_tarball" -C "$tmp" && rm -rf "$urllib3_src" \
        && mv "$tmp/urllib3-$URLLIB3_VERSION" "$urllib3_src"
    local rc=$?
    rm -rf "$tmp"
    return $rc
}

# urllib3_venv PY X.Y: prints the python of build/urllib3-venv-X.Y, made
# from PY and holding urllib3 (from the sdist) and URLLIB3_TEST_DEPS; a
# stamp in it records what was installed, so a reused venv costs nothing
urllib3_venv() {
    local py=$1 v=$2 venv="build/urllib3-venv-$2" want log="build/urllib3-venv-$2.log"
    if ! "$venv/bin/python" -c '' 2>/dev/null; then
        "$py" -m venv --clear "$venv" >"$log" 2>&1 || { cat "$log" >&2; return 1; }
    fi
    want="$URLLIB3_VERSION ${URLLIB3_TEST_DEPS[*]}"
    if [ "$(cat "$venv/ddlock-installed" 2>/dev/null)" != "$want" ]; then
        echo "  urllib3: installing urllib3 $URLLIB3_VERSION and its test dependencies in $venv" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            "$urllib3_tarball" "${URLLIB3_TEST_DEPS[@]}" >"$log" 2>&1 \
            || { cat "$log" >&2; return 1; }
        echo "$want" >"$venv/ddlock-installed"
    fi
    echo "$repo/$venv/bin/python"
}

# urllib3_tests X.Y PY: urllib3's connection-pool tests natively and under
# ddlock in the version's venv, judged per case
urllib3_tests() {
    local v=$1 py=$2 vpy t0=$SECONDS t1 t2 tn td rn rd
    local nx="$out/urllib3-native-$v.xml" dx="$out/urllib3-ddlock-$v.xml" prof="$out/urllib3-profile-$v"
    # scripts/pytest_collect_garbage.py: an unclosed socket's ResourceWarning
    # is reported by the same test natively and under ddlock
    local args=(-m pytest -p no:cacheprovider -p pytest_collect_garbage --rootdir .
                --timeout 60 -q "${URLLIB3_TESTS[@]}")
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "  urllib3: skipped (urllib3 $URLLIB3_VERSION needs Python 3.10+)"
        return 0
    fi
    urllib3_sdist "$py" || { echo "  urllib3: downloading the sdist failed"; return 1; }
    vpy=$(urllib3_venv "$py" "$v") || { echo "  urllib3: making the venv failed"; return 1; }
    t1=$SECONDS
    rm -rf "$nx" "$dx" "$prof"
    mkdir -p "$prof"
    # timeout: pytest-timeout covers a hanging case, this a hang outside one
    (cd "$urllib3_src" && PYTHONPATH="$repo/scripts" timeout -k 10 600 "$vpy" "${args[@]}" \
        --junitxml "$nx") >"$out/urllib3-native-$v.log" 2>&1
    rn=$?
    t2=$SECONDS
    (cd "$urllib3_src" && PYTHONPATH="$repo:$repo/scripts" DD_PROFILING_UPLOAD_ENABLED=false \
        timeout -k 10 600 "$vpy" -m ddlock.run --capture-pct 100 --output "$prof/urllib3" \
        "$vpy" "${args[@]}" --junitxml "$dx") >"$out/urllib3-ddlock-$v.log" 2>&1
    rd=$?
    tn=$((t2 - t1)) td=$((SECONDS - t2))
    if [ ! -s "$nx" ] || [ ! -s "$dx" ]; then
        echo "  urllib3: no JUnit report (native exit $rn, ddlock exit $rd)"
        tail -n 20 "$out/urllib3-native-$v.log" "$out/urllib3-ddlock-$v.log"
        return 1
    fi
    "$py" scripts/junit_failures.py "$nx" --summary --label "  urllib3 native"
    "$py" scripts/junit_failures.py "$dx" --summary --label "  urllib3 ddlock"
    if ! "$py" scripts/junit_failures.py "$dx" --not-in "$nx" --label "  urllib3"; then
        echo "  urllib3: DIFFERS (native exit $rn, ddlock exit $rd); the ddlock log's tail:"
        tail -n 40 "$out/urllib3-ddlock-$v.log"
        return 1
    fi
    # the profiler ran in pytest's process: the pool's LifoQueue lock is in
    # the profile it wrote
    if ! PYTHONPATH="$repo" "$py" -m ddlock report --top 1000 "$prof" 2>&1 | grep -q "LifoQueue.mutex"; then
        echo "  urllib3: the ddlock profile in $prof has no LifoQueue.mutex (urllib3's pool)"
        return 1
    fi
    echo "  urllib3 $URLLIB3_VERSION: as natively (exit $rn); $((SECONDS - t0)) s: venv and install $((t1 - t0)) s, native $tn s, ddlock $td s"
}

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
    urllib3_tests "$v" "$py" || ok=0
    [ $ok = 1 ] || failed+=("$v")
    echo "=== CPython $v: $((SECONDS - t0)) s"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-libraries: FAILED on: ${failed[*]}"
    exit 1
fi
echo "test-libraries: dill, gevent, trio and urllib3 behave under ddlock as natively on ${versions[*]}"
