#!/usr/bin/env python3
"""Install Datadog's ddtrace (the peer whose lock profiler we compare with)
into a private directory, never into the interpreter the tests use.

    python3 benchmarks/setup_ddtrace.py          # install if missing, print the path
    python3 benchmarks/setup_ddtrace.py --check  # only check, exit 1 if unusable

The packages go to benchmarks/.venvs/ddtrace-py<X.Y>/ with
`pip install --target` (one directory per interpreter version, because the
wheels are compiled). Only the ddtrace benchmark processes get that
directory on PYTHONPATH. Idempotent, and silent when already installed.
Override the requirement with DDLOCK_BENCH_DDTRACE (default "ddtrace>=4,<5",
the major version whose settings run.py sets).
"""

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENT = os.environ.get("DDLOCK_BENCH_DDTRACE", "ddtrace>=4,<5")

# What must import for the lock collector to be usable.
PROBE = (
    "import ddtrace, ddtrace.profiling.collector._lock, "
    "ddtrace.profiling.collector.threading; print(ddtrace.__version__)"
)


def target_dir(python=sys.executable):
    ver = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True).stdout.strip()
    return os.path.join(HERE, ".venvs", "ddtrace-py" + ver)


def probe(path, python=sys.executable):
    """ddtrace's version if it imports from path, else (None, why)."""
    if not os.path.isdir(path):
        return None, "not installed"
    env = dict(os.environ, PYTHONPATH=path)
    for k in list(env):
        if k.startswith("DD_"):
            del env[k]
    try:
        r = subprocess.run([python, "-c", PROBE], env=env, capture_output=True,
                           text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None, "importing ddtrace timed out"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return None, "ddtrace does not import: " + last
    return r.stdout.strip(), None


def ensure(python=sys.executable, quiet=False):
    """Return (path, version, None) or (None, None, reason)."""
    path = target_dir(python)
    version, why = probe(path, python)
    if version is not None:
        return path, version, None
    if not quiet:
        print("setup: installing %s into %s ..." % (REQUIREMENT, os.path.relpath(path)),
              file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-ddtrace-", dir=os.path.dirname(path))
    try:
        r = subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-input", "--target", tmp, REQUIREMENT],
            capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            errs = [l for l in r.stderr.strip().splitlines()
                    if l.startswith("ERROR")] or r.stderr.strip().splitlines()[-3:]
            return None, None, "pip install %s failed: %s" % (
                REQUIREMENT, " | ".join(errs) or "exit %d" % r.returncode)
        # Swap in atomically enough: a half-finished install is never at path.
        if os.path.exists(path):
            shutil.rmtree(path)
        os.rename(tmp, path)
        tmp = None
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, None, "pip install %s failed: %s" % (REQUIREMENT, e)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    version, why = probe(path, python)
    if version is None:
        return None, None, why
    if not quiet:
        print("setup: ddtrace %s ready" % version, file=sys.stderr, flush=True)
    return path, version, None


def main():
    if "--check" in sys.argv[1:]:
        path = target_dir()
        version, why = probe(path)
        print(version if version else "unusable: %s" % why)
        return 0 if version else 1
    path, version, why = ensure()
    if path is None:
        print("ddtrace unavailable: %s" % why, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
