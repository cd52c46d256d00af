#!/usr/bin/env bash
# make test-portable: the pytest suite against the portable build (the
# public C API only, as on CPython versions ddlock has not been tested on:
# 3.14, 3.15, ...) on every CPython 3.9-3.13 found under pyenv. Each build
# goes to build/portable/ (the in-place build is left alone) and the suite
# imports it through DDLOCK_TEST_PYTHONPATH.
#   PORTABLE_TESTS="test_naming.py ...": only these files of tests/ (CI's
#   lighter form on the versions between the oldest and the newest)
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pythons.sh
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${DEFAULT_PYVERSIONS[@]}")
out="$PWD/build/portable"
mkdir -p "$out/ddlock"
cp ddlock/*.py ddlock/*.pyi ddlock/py.typed "$out/ddlock/"
# The portable build differs from the regular one in the Python-facing
# units only (pycompat.h's paths: frames, names, lock layouts). The files
# below test code that is the same in both builds (the pure-C exporter and
# encoder, the pure-Python profile reader, the packaging and the layering
# check): make test-all runs them on every version; here they are left out
# (about a third of the suite's time) unless PORTABLE_FULL=1.
skip=()
if [ "${PORTABLE_FULL:-0}" != 1 ]; then
    for f in test_packaging test_upload test_hostile_input test_read_limits test_pprof_reader \
             test_check_layers test_tls_ca test_disk_limits; do
        skip+=(--ignore "$PWD/tests/$f.py")
    done
fi
targets=("$PWD/tests")
if [ -n "${PORTABLE_TESTS:-}" ]; then
    targets=()
    for f in $PORTABLE_TESTS; do targets+=("$PWD/tests/$f"); done
fi
failed=()
for v in "${versions[@]}"; do
    py=$(require_python "$v" test-portable) || { failed+=("$v(missing)"); continue; }
    echo "=== CPython $v, portable build ($py)"
    rm -f "$out"/ddlock/_ddlock*.so
    scripts/deps.sh --python "$py" || { failed+=("$v(deps)"); continue; }
    DDLOCK_PORTABLE=1 CFLAGS="${CFLAGS:-} -DDDL_PORTABLE=1" "$py" setup.py -q build_ext --force \
        --build-lib "$out" --build-temp "build/portable-tmp-$v" >"build/portable-$v.log" 2>&1 \
        || { cat "build/portable-$v.log"; failed+=("$v(build)"); continue; }
    walk=$(cd /tmp && PYTHONPATH="$out" "$py" -c 'import ddlock; print(ddlock.build_info()["frame_walk"])')
    if [ "$walk" != "public" ]; then
        echo "test-portable: the build for $v is not the portable one ($walk)" >&2
        failed+=("$v(not portable)")
        continue
    fi
    # run from the build: the in-process tests import its ddlock, not the
    # checkout's (python -m puts the working directory first on sys.path)
    (cd "$out" && DDLOCK_TEST_PYTHONPATH="$out" "$py" -m pytest -q -m "not heavy" -p no:cacheprovider \
        --rootdir "$OLDPWD" -c "$OLDPWD/pyproject.toml" "${skip[@]}" ${PYTEST_ARGS:-} "${targets[@]}") \
        || failed+=("$v")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-portable: FAILED on: ${failed[*]}" >&2
    exit 1
fi
echo "test-portable: pytest suite passed on the portable build of ${versions[*]}"
