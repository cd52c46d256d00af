#!/usr/bin/env bash
# Sanitizer runs (make sanitize):
#  1. the extension built with -fsanitize=address,undefined into build/san,
#     the whole pytest suite run against it with the ASan runtime preloaded
#     and PYTHONMALLOC=malloc, any ASan/UBSan report failing the run;
#  2. the Check suite built with ASan/UBSan, then run under valgrind memcheck
#     (plain build) with no definite leaks and no invalid accesses.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SAN=build/san
rm -rf "$SAN"
mkdir -p "$SAN/ddlock"
echo "sanitize: building the extension with ASan/UBSan"
DDLOCK_SANITIZE=1 "$PYTHON" setup.py -q build_ext --build-lib "$SAN" --build-temp build/san-tmp \
    > build/san-build.log 2>&1 || { cat build/san-build.log; exit 1; }
cp ddlock/*.py ddlock/*.pyi ddlock/py.typed "$SAN/ddlock/"
libasan=$(gcc -print-file-name=libasan.so)
[ -f "$libasan" ] || { echo "sanitize: libasan not found" >&2; exit 1; }
log_dir=$(mktemp -d)
export DDLOCK_TEST_PYTHONPATH="$PWD/$SAN"
# reports go to files (one per process, children included) so none is missed
echo "sanitize: pytest with the ASan runtime preloaded (reports in $log_dir)"
set +e
env LD_PRELOAD="$libasan" PYTHONMALLOC=malloc PYTHONPATH="$PWD/$SAN" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$log_dir/asan:halt_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$log_dir/ubsan" \
    "$PYTHON" -m pytest -q -p no:randomly ${PYTEST_ARGS:-} -m "not no_sanitize" tests
rc=$?
set -e
reports=$(ls "$log_dir" 2>/dev/null | wc -l)
if [ "$reports" -gt 0 ]; then
    echo "sanitize: $reports sanitizer report(s):" >&2
    head -n 60 "$log_dir"/* >&2
    exit 1
fi
[ $rc -eq 0 ] || { echo "sanitize: pytest failed under ASan ($rc)" >&2; exit $rc; }
echo "sanitize: pytest under ASan/UBSan: no reports"
echo "sanitize: Check suite with ASan/UBSan"
make -s -C tests/c SANITIZE=1
echo "sanitize: Check suite under valgrind memcheck"
make -s -C tests/c VALGRIND=1
echo "sanitize: all clean"
