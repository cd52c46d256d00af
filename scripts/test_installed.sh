#!/usr/bin/env bash
# Test ddlock as a user installs it, not from the source tree:
#   scripts/test_installed.sh wheel [--smoke-only] [X.Y...]   dist/*manylinux*.whl (make wheel)
#   scripts/test_installed.sh sdist [--smoke-only] [X.Y...]   dist/ddlock-*.tar.gz (make sdist)
# For each CPython X.Y (default 3.9-3.13, under pyenv), in build/installed/<kind>-X.Y:
#  1. a fresh venv gets the artifact with pip; the sdist is built and
#     installed with protoc-c NOT on PATH (every PATH directory holding it is
#     replaced by a mirror without it), from its shipped generated sources;
#  2. scripts/smoke_installed.py runs there from outside the source tree:
#     ddlock imports from the venv, profiles a lock, flush() writes the file;
#     for a wheel, libcurl and libprotobuf-c must be the vendored copies;
#  3. mypy (scripts/deps.sh installs it for $PYTHON) checks
#     tests/typecheck/public_api.py against the installed package only: its
#     py.typed marker and annotations must have been installed;
#  4. unless --smoke-only, the pytest suite runs with the venv's interpreter
#     from a copy of the tests (the sdist's own, for an sdist) in a tree
#     without ddlock/, with DDLOCK_TEST_INSTALLED=<venv>:
#     tests/test_packaging.py's test_package_under_test fails unless every
#     process imported ddlock from the venv.
# PYTEST_ARGS is passed to pytest. Prints the seconds each step took.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pythons.sh
ROOT=$PWD
PYTHON=${PYTHON:-python3}
kind=${1:-}
case "$kind" in
    wheel|sdist) shift ;;
    *) echo "usage: $0 wheel|sdist [--smoke-only] [X.Y...]" >&2; exit 2 ;;
esac
suite=full
if [ "${1:-}" = "--smoke-only" ]; then suite=smoke; shift; fi
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${DEFAULT_PYVERSIONS[@]}")
tools=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
[ -x "$tools/mypy" ] || { echo "test-installed: mypy missing for $PYTHON (make deps)" >&2; exit 1; }

step() {  # name, command...: run it, print its duration
    local name=$1 t0=$SECONDS; shift
    if "$@"; then
        echo "test-installed: $label: $name ok ($((SECONDS - t0)) s)"
    else
        echo "test-installed: $label: $name FAILED ($((SECONDS - t0)) s)" >&2
        return 1
    fi
}

# PATH with protoc-c removed: each directory holding it becomes a mirror
# (symlinks to everything else in it) under $1
path_without_protoc_c() {
    local mirror_root=$1 out=() d i=0
    IFS=: read -r -a dirs <<<"$PATH"
    for d in "${dirs[@]}"; do
        if [ -e "$d/protoc-c" ]; then
            i=$((i + 1))
            mkdir -p "$mirror_root/$i"
            for f in "$d"/*; do
                [ "$(basename "$f")" = protoc-c ] || ln -s "$f" "$mirror_root/$i/"
            done
            out+=("$mirror_root/$i")
        else
            out+=("$d")
        fi
    done
    (IFS=:; echo "${out[*]}")
}

install_wheel() {
    "$vpy" -m pip install -q --no-deps "$artifact"
}

install_sdist() {
    local nopath
    nopath=$(path_without_protoc_c "$dir/path-without-protoc-c") || return 1
    if PATH=$nopath command -v protoc-c >/dev/null; then
        echo "test-installed: protoc-c still on the filtered PATH" >&2
        return 1
    fi
    # -v: the build's own output goes to the log
    PATH=$nopath "$vpy" -m pip install -v --no-deps "$artifact" > "$dir/install.log" 2>&1 \
        || { tail -n 40 "$dir/install.log" >&2; return 1; }
    if grep -n "ddlock: warning" "$dir/install.log" >&2; then
        echo "test-installed: the sdist's generated sources were not current" >&2
        return 1
    fi
}

smoke() {
    (cd "$dir" && "$vpy" "$ROOT/scripts/smoke_installed.py" $vendored)
}

typecheck() {
    # from $dir: no ddlock/ there; mypy finds the package only in the venv
    (cd "$dir" && "$tools/mypy" --python-executable "$vpy" --no-incremental \
        --strict --warn-unused-ignores "$ROOT/tests/typecheck/public_api.py")
}

# the tests and what they read (ext/, scripts/, setup.py whose helpers
# tests/test_packaging.py checks, pytest's settings in pyproject.toml) in a
# tree with no ddlock/
test_tree() {
    local src=$1
    rm -rf "$tree" && mkdir -p "$tree/build" || return 1
    cp -r "$src/tests" "$src/ext" "$src/scripts" "$src/setup.py" "$src/pyproject.toml" "$tree/" || return 1
    find "$tree" -name __pycache__ -prune -exec rm -rf {} + || return 1
    rm -rf "$tree/tests/c/build" "$tree/tests/c/build-san"
    cp "$ROOT"/build/no-*-wheel-* "$tree/build/" 2>/dev/null || true  # scripts/deps.sh's markers
    [ ! -e "$tree/ddlock" ]
}

suite() {
    scripts/deps.sh --python "$vpy" || return 1  # pytest, hypothesis, gevent into the venv
    (cd "$tree" && DDLOCK_TEST_INSTALLED="$dir/venv" "$vpy" -m pytest -q -rs -m "not heavy" ${PYTEST_ARGS:-})
}

failed=()
for v in "${versions[@]}"; do
    label="$kind $v"
    py=$(find_python "$v")
    [ -n "$py" ] || { echo "test-installed: CPython $v not found under pyenv" >&2; failed+=("$v(missing)"); continue; }
    tag=cp${v/./}
    if [ "$kind" = wheel ]; then
        artifact=$(ls dist/ddlock-*-"$tag"-"$tag"-*manylinux*.whl 2>/dev/null | tail -n 1)
        vendored=--vendored
    else
        artifact=$(ls dist/ddlock-*.tar.gz 2>/dev/null | tail -n 1)
        vendored=
    fi
    [ -n "$artifact" ] || { echo "test-installed: no $kind for $v in dist/ (make $kind)" >&2; failed+=("$v(no $kind)"); continue; }
    echo "=== $label: $artifact"
    dir=$ROOT/build/installed/$kind-$v
    tree=$dir/tree
    vpy=$dir/venv/bin/python
    rm -rf "$dir" && mkdir -p "$dir"
    step venv "$py" -m venv "$dir/venv" || { failed+=("$v(venv)"); continue; }
    step install "install_$kind" || { failed+=("$v(install)"); continue; }
    step smoke smoke || { failed+=("$v(smoke)"); continue; }
    step mypy typecheck || { failed+=("$v(mypy)"); continue; }
    [ "$suite" = full ] || continue
    if [ "$kind" = sdist ]; then
        mkdir -p "$dir/unpacked" && tar -xzf "$artifact" -C "$dir/unpacked"
        step tests-from-sdist test_tree "$(ls -d "$dir"/unpacked/ddlock-*)" || { failed+=("$v(tree)"); continue; }
    else
        step tests-from-checkout test_tree "$ROOT" || { failed+=("$v(tree)"); continue; }
    fi
    step pytest suite || failed+=("$v(pytest)")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-installed: $kind FAILED on: ${failed[*]}" >&2
    exit 1
fi
echo "test-installed: $kind installed and tested ($suite) on ${versions[*]}"
