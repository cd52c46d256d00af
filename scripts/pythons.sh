# Sourced by the scripts that run one CPython after another (test_all.sh,
# wheel.sh, test_installed.sh): where each X.Y lives and which it is.

DEFAULT_PYVERSIONS=(3.9 3.10 3.11 3.12 3.13)

# find_python X.Y: the newest CPython X.Y.* under pyenv (empty if none)
find_python() {
    local root
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    ls -d "$root"/versions/"$1".*/bin/python 2>/dev/null | sort -V | tail -n 1
}

# require_python X.Y WHAT: find_python's answer, or (status 1) a line on
# stderr saying WHAT cannot run on X.Y
require_python() {
    local py
    py=$(find_python "$1")
    if [ -z "$py" ]; then
        echo "$2: CPython $1 not found under pyenv" >&2
        return 1
    fi
    echo "$py"
}
