#!/usr/bin/env bash
# Run the pytest suite on each requested CPython (default 3.9–3.13) found
# under pyenv, each with its own version-tagged in-place build.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/pythons.sh
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${DEFAULT_PYVERSIONS[@]}")
mkdir -p build
failed=()
for v in "${versions[@]}"; do
    py=$(find_python "$v")
    if [ -z "$py" ]; then
        echo "test-all: CPython $v not found under pyenv" >&2
        failed+=("$v(missing)")
        continue
    fi
    echo "=== CPython $v ($py)"
    scripts/deps.sh --python "$py" || { failed+=("$v(deps)"); continue; }
    "$py" setup.py -q build_ext --inplace --build-temp "build/tmp-$v" >/dev/null 2>build/build-$v.log \
        || { cat "build/build-$v.log"; failed+=("$v(build)"); continue; }
    "$py" -m pytest -q -m "not heavy" ${PYTEST_ARGS:-} || failed+=("$v")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-all: FAILED on: ${failed[*]}" >&2
    exit 1
fi
echo "test-all: pytest suite passed on ${versions[*]}"
