#!/usr/bin/env python3
"""Overhead of ddlock on Semaphore, BoundedSemaphore, Condition and the
asyncio primitives, side by side with the native ones, in one run.

    python3 benchmarks/bench_primitives.py            # ~2-3 min on 2 cores
    python3 benchmarks/bench_primitives.py --quick    # smoke test, < 30 s
    python3 benchmarks/bench_primitives.py --json out.json

Configurations: native (ddlock not even imported), ddlock at 0% capture and
ddlock at its default 1%. Every (configuration, round) is a fresh
interpreter running this file with --child; rounds are interleaved (each
round runs every configuration once, in an order rotated per round), each
process reports its fastest repeat per workload (an empty loop of the same
length subtracted), and the table shows the median over rounds with the
ratio to native. The targets (ROWS below) are reported PASS/MISS, never
asserted.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CONFIGS = {"native": None, "ddlock-0": 0.0, "ddlock-default": None}
CONFIG_ORDER = ["native", "ddlock-0", "ddlock-default"]
# Targets, as the issue sets them: where the native operation is pure Python
# (threading.py's Semaphore and Condition.__enter__, asyncio's locks), at most
# 1.10x native at 0% and at the default rate; where it is C (a Condition's
# acquire/release are its RLock's C methods), Lock's own targets: at most
# 1.00x at the default rate and 0.95x at 0%.
PY_TARGET = (1.10, 1.10)   # (0%, default)
C_TARGET = (0.95, 1.00)

# (key, row label, targets or None)
ROWS = [
    ("sem_with", "`with` threading.Semaphore", PY_TARGET),
    ("sem_acqrel", "acquire()+release() threading.Semaphore", PY_TARGET),
    ("bsem_with", "`with` threading.BoundedSemaphore", PY_TARGET),
    ("bsem_acqrel", "acquire()+release() threading.BoundedSemaphore", PY_TARGET),
    ("cond_with", "`with` threading.Condition", PY_TARGET),
    ("cond_acqrel", "acquire()+release() threading.Condition (native: C)", C_TARGET),
    ("alock_with", "`async with` asyncio.Lock", PY_TARGET),
    ("alock_acqrel", "await acquire()+release() asyncio.Lock", PY_TARGET),
    ("asem_with", "`async with` asyncio.Semaphore", PY_TARGET),
    ("absem_with", "`async with` asyncio.BoundedSemaphore", PY_TARGET),
    ("acond_with", "`async with` asyncio.Condition", PY_TARGET),
    ("sem_create", "threading.Semaphore()", None),
    ("cond_create", "threading.Condition()", None),
    ("alock_create", "asyncio.Lock()", None),
]


# ---- child: one configuration --------------------------------------------

def child(config, quick):
    import asyncio
    import threading

    perf = time.perf_counter_ns
    repeats = 3 if quick else 9
    n = 20_000 if quick else 100_000

    if config != "native":
        import ddlock

        prefix = os.path.join(tempfile.mkdtemp(prefix="ddlock-bench-"), "prof")
        kw = dict(output_pprof=prefix, upload_enabled=False)
        if CONFIGS[config] is not None:
            kw["capture_pct"] = CONFIGS[config]
        ddlock.start(**kw)
        assert ddlock._primitives.tracker_of(threading.Semaphore(1)) is not None

    def empty(n):
        r = range(n)
        t0 = perf()
        for _ in r:
            pass
        return perf() - t0

    def t_with(obj, n):
        r = range(n)
        t0 = perf()
        for _ in r:
            with obj:
                pass
        return perf() - t0

    def t_acqrel(obj, n):
        acquire, release = obj.acquire, obj.release
        r = range(n)
        t0 = perf()
        for _ in r:
            acquire()
            release()
        return perf() - t0

    def t_create(factory, n):
        r = range(n)
        t0 = perf()
        for _ in r:
            factory()
        return perf() - t0

    async def a_empty(n):
        r = range(n)
        t0 = perf()
        for _ in r:
            pass
        return perf() - t0

    async def a_with(obj, n):
        r = range(n)
        t0 = perf()
        for _ in r:
            async with obj:
                pass
        return perf() - t0

    async def a_acqrel(obj, n):
        r = range(n)
        t0 = perf()
        for _ in r:
            await obj.acquire()
            obj.release()
        return perf() - t0

    def best(fn, *args, count=n):
        base = min(empty(count) for _ in range(3))
        return max(0.0, (min(fn(*args, count) for _ in range(repeats)) - base) / count)

    out = {}
    out["sem_with"] = best(t_with, threading.Semaphore(1))
    out["sem_acqrel"] = best(t_acqrel, threading.Semaphore(1))
    out["bsem_with"] = best(t_with, threading.BoundedSemaphore(1))
    out["bsem_acqrel"] = best(t_acqrel, threading.BoundedSemaphore(1))
    out["cond_with"] = best(t_with, threading.Condition())
    out["cond_acqrel"] = best(t_acqrel, threading.Condition())
    out["sem_create"] = best(t_create, threading.Semaphore, count=n // 5)
    out["cond_create"] = best(t_create, threading.Condition, count=n // 5)

    async def amain():
        res = {}

        async def abest(fn, obj, count=n):
            base = min([await a_empty(count) for _ in range(3)])
            return max(0.0, (min([await fn(obj, count) for _ in range(repeats)]) - base) / count)

        res["alock_with"] = await abest(a_with, asyncio.Lock())
        res["alock_acqrel"] = await abest(a_acqrel, asyncio.Lock())
        res["asem_with"] = await abest(a_with, asyncio.Semaphore(1))
        res["absem_with"] = await abest(a_with, asyncio.BoundedSemaphore(1))
        res["acond_with"] = await abest(a_with, asyncio.Condition())
        res["alock_create"] = best(t_create, asyncio.Lock, count=n // 5)
        return res

    out.update(asyncio.run(amain()))
    if config != "native":
        import ddlock

        out["_stats"] = {k: v for k, v in ddlock.stats().items()
                         if k in ("events_sampled", "primitives_created")}
        ddlock.stop(flush=False)
    print(json.dumps({"config": config, "results": out}))


# ---- parent ---------------------------------------------------------------

def run_child(config, quick):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "PYTHON"))}
    env["PYTHONPATH"] = REPO
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config]
    if quick:
        cmd.append("--quick")
    r = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True, timeout=600)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit("bench_primitives: %s failed (%d):\n%s" % (config, r.returncode, r.stderr))
    return json.loads(lines[-1])["results"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.quick)
        return 0
    rounds = args.rounds or (3 if args.quick else 7)
    runs = {c: [] for c in CONFIG_ORDER}
    t0 = time.monotonic()
    for i in range(rounds):
        order = CONFIG_ORDER[i % len(CONFIG_ORDER):] + CONFIG_ORDER[:i % len(CONFIG_ORDER)]
        for config in order:
            runs[config].append(run_child(config, args.quick))
        print("round %d/%d done (%.0f s)" % (i + 1, rounds, time.monotonic() - t0),
              file=sys.stderr)
    med = {c: {k: statistics.median(r[k] for r in rs) for k, _, _ in ROWS}
           for c, rs in runs.items()}
    print("\nddlock primitives overhead: CPython %s, %s, %d rounds, medians (ns/op)\n"
          % (platform.python_version(), platform.machine(), rounds))
    header = "| operation | native | ddlock 0% | ddlock 1% (default) | target (0%, default) |"
    print(header)
    print("|---|---:|---:|---:|---|")
    table = []
    misses = 0
    for key, label, target in ROWS:
        nat = med["native"][key]
        cells = ["%.0f" % nat]
        ratios = []
        for c in ("ddlock-0", "ddlock-default"):
            v = med[c][key]
            r = v / nat if nat else float("nan")
            ratios.append(r)
            cells.append("%.0f (%.2fx)" % (v, r))
        if target is not None:
            ok = all(r <= t for r, t in zip(ratios, target))
            misses += not ok
            verdict = "%s (<= %.2fx, %.2fx)" % ("PASS" if ok else "MISS", target[0], target[1])
        else:
            verdict = "(not a target)"
        print("| %s | %s | %s |" % (label, " | ".join(cells), verdict))
        table.append({"key": key, "label": label, "native_ns": nat,
                      "ddlock0_ns": med["ddlock-0"][key],
                      "ddlock_default_ns": med["ddlock-default"][key],
                      "ratios": ratios, "verdict": verdict})
    print("\n%d of %d targets missed" % (misses, sum(1 for r in ROWS if r[2] is not None)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": platform.python_version(), "rounds": rounds,
                       "rows": table, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
