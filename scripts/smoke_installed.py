"""Smoke test of an installed ddlock, run by scripts/test_installed.sh with a
fresh venv's interpreter from outside the source tree.

    python smoke_installed.py [--vendored] [--out DIR]

Fails (exit 1) unless: this interpreter is a venv's and imports ddlock and
its C extension from that venv (not from a source tree); a profiled lock
shows up by name, with every acquire counted, in the file ``flush()`` writes.
With ``--vendored`` (a repaired wheel), libcurl and libprotobuf-c must be
the copies the wheel carries in ``ddlock.libs/``, and no system copy of
them may be loaded. Prints what it found as one JSON line.
"""

import argparse
import json
import os
import sys
import tempfile
import threading

ACQUIRES = 25
VENDORED = ("libcurl", "libprotobuf-c")


def fail(msg):
    sys.stderr.write("smoke: FAILED: %s\n" % msg)
    sys.exit(1)


def inside(path, root):
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


def mapped(prefixes):
    """{prefix: sorted paths of the shared objects mapped in this process
    whose file name starts with prefix + "." or prefix + "-"}"""
    found = {p: set() for p in prefixes}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            path = parts[5].strip()
            name = os.path.basename(path)
            for p in prefixes:
                if name.startswith(p + ".") or name.startswith(p + "-"):
                    found[p].add(path)
    return {p: sorted(v) for p, v in found.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vendored", action="store_true",
                    help="libcurl and libprotobuf-c must come from ddlock.libs")
    ap.add_argument("--out", default="smoke-profiles",
                    help="directory for the profile files (default ./smoke-profiles)")
    args = ap.parse_args()

    if sys.prefix == sys.base_prefix:
        fail("%s is not a virtual environment's interpreter" % sys.executable)
    import ddlock
    from ddlock import _ddlock, testing

    for mod in (ddlock, _ddlock):
        if not inside(mod.__file__, sys.prefix):
            fail("%s was imported from %s, not from the venv %s"
                 % (mod.__name__, mod.__file__, sys.prefix))

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    prefix = os.path.join(tempfile.mkdtemp(dir=out), "smoke")
    ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False)
    if not ddlock.is_running():
        fail("ddlock.start() did not start the profiler")
    smoke_lock = threading.Lock()
    for _ in range(ACQUIRES):
        with smoke_lock:
            pass
    paths = ddlock.flush()
    stats = ddlock.stats()
    ddlock.stop(flush=False)

    if not paths or not all(os.path.isfile(p) for p in paths):
        fail("flush() wrote no file: %r (stats %r)" % (paths, stats))
    with open(paths[0], "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            fail("%s is not gzip" % paths[0])
    profile = testing.parse_newest_profile(prefix)
    names = [n for n in testing.get_lock_names(profile) if n.endswith(":smoke_lock")]
    if len(names) != 1:
        fail("no sample names smoke_lock; lock names: %r" % testing.get_lock_names(profile))
    acquired = sum(testing.get_sample_value(profile, s, testing.LOCK_ACQUIRE)
                   for s in testing.get_samples_with_lock_name(profile, names[0]))
    if acquired != ACQUIRES:
        fail("%s: %d acquires in the profile, %d made" % (names[0], acquired, ACQUIRES))

    libs = mapped(VENDORED)
    if args.vendored:
        libs_dir = os.path.join(os.path.dirname(os.path.dirname(ddlock.__file__)), "ddlock.libs")
        for name, where in libs.items():
            if not where:
                fail("%s is not loaded at all" % name)
            outside = [p for p in where if not inside(p, libs_dir)]
            if outside:
                fail("%s loaded from outside the wheel's %s: %r" % (name, libs_dir, outside))
    print(json.dumps({
        "python": sys.version.split()[0],
        "ddlock": ddlock.__file__,
        "extension": _ddlock.__file__,
        "file": paths[0],
        "lock": names[0],
        "acquires": acquired,
        "libraries": libs,
    }))


if __name__ == "__main__":
    main()
