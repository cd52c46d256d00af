#!/usr/bin/env python3
"""Read a JUnit XML report: CPython's ``python -m test --junit-xml``
(scripts/test_cpython.sh) or pytest's ``--junitxml`` (urllib3's tests in
scripts/test_libraries.sh), the run under ddlock judged against native.

    junit_failures.py REPORT --modules        failing test modules, one line
    junit_failures.py REPORT --not-in NATIVE  exit 1 (listing them) when a case
                                               fails in REPORT but not in NATIVE,
                                               or ran in NATIVE and not in REPORT
    junit_failures.py REPORT --summary        cases run, skipped, failed
    --label NAME                              what the lines start with
                                               (default: test-cpython)
"""

import argparse
import sys
import xml.etree.ElementTree as ET


def cases(path):
    """{(classname, name): 'ok' | 'skipped' | 'failed'} of a report."""
    out = {}
    for tc in ET.parse(path).iter("testcase"):
        key = (tc.get("classname", ""), tc.get("name", ""))
        if tc.find("failure") is not None or tc.find("error") is not None:
            status = "failed"
        elif tc.find("skipped") is not None:
            status = "skipped"
        else:
            status = "ok"
        if out.get(key) != "failed":  # a case listed twice fails if either did
            out[key] = status
    return out


def module_of(case):
    # ("test.test_threading.ThreadTests", "test_x") -> "test_threading";
    # ("", "test.test_asyncio.test_locks.LockTests.test_x") (3.11 and later
    # put the whole id in the name) -> "test_asyncio.test_locks"
    classname, name = case
    parts = (classname + "." + name if classname else name).split(".")
    if parts and parts[0] == "test":
        parts = parts[1:]
    mod = []
    for p in parts:
        if not p.startswith("test_"):
            break
        mod.append(p)
    if len(mod) == len(parts):  # module.test_function: the last is the test
        mod = mod[:-1]
    return ".".join(mod) or parts[0]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--modules", action="store_true")
    g.add_argument("--not-in", metavar="NATIVE")
    g.add_argument("--summary", action="store_true")
    ap.add_argument("--label", default="test-cpython")
    args = ap.parse_args(argv)
    got = cases(args.report)
    failing = sorted(k for k, v in got.items() if v == "failed")
    if args.modules:
        print(" ".join(sorted({module_of(k) for k in failing})))
        return 0
    if args.summary:
        n = {s: sum(1 for v in got.values() if v == s) for s in ("ok", "skipped", "failed")}
        print("%s: %d cases: %d passed, %d skipped, %d failed" % (
            args.label, len(got), n["ok"], n["skipped"], n["failed"]))
        return 0
    native = cases(args.not_in)
    only_ours = [k for k in failing if native.get(k) != "failed"]
    for c, name in failing:
        verdict = "ddlock only" if (c, name) in only_ours else "natively too"
        print("  %s: fails %s" % (".".join(x for x in (c, name) if x), verdict))
    missing = sorted(k for k in native if k not in got)
    for c, name in missing:
        print("  %s: ran natively, not under ddlock" % ".".join(x for x in (c, name) if x))
    if only_ours:
        print("%s: %d case(s) fail under ddlock and not natively" % (args.label, len(only_ours)))
    if missing:
        print("%s: %d case(s) ran natively and not under ddlock" % (args.label, len(missing)))
    return 1 if only_ours or missing else 0


if __name__ == "__main__":
    sys.exit(main())
