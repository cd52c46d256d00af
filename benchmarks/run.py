#!/usr/bin/env python3
"""ddlock overhead benchmark, side by side with native locks and with
Datadog's ddtrace lock profiler, in one run.

    python3 benchmarks/run.py              # full run (make bench), ~5-8 min on 2 cores
    python3 benchmarks/run.py --quick      # smoke test, < 60 s
    python3 benchmarks/run.py --no-ddtrace # skip installing/running ddtrace

Every (configuration, round) is a fresh interpreter running
benchmarks/workloads.py. Rounds are interleaved: each round runs every
configuration once, in an order rotated by one position per round (from a
seeded shuffle), so slow drifts of the machine touch every configuration
alike. Each process reports its best repeat per workload; the tables show
the median over rounds. Results: stdout, benchmarks/results/latest.md and
benchmarks/results/latest.json. Targets are reported PASS/MISS, never
asserted: the exit status is 0 unless the benchmark itself broke.
"""

import argparse
import datetime
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import setup_ddtrace  # noqa: E402
from workloads import CONFIGS  # noqa: E402

CONFIG_ORDER = ["native", "ddlock-0", "ddlock-default", "ddlock-100",
                "portable-default", "portable-100", "ddlock-order", "ddtrace-default",
                "ddtrace-100"]
LABELS = {
    "native": "native",
    "ddlock-0": "ddlock 0%",
    "ddlock-default": "ddlock 1% (default)",
    "ddlock-100": "ddlock 100%",
    "portable-default": "ddlock portable 1% (default)",
    "portable-100": "ddlock portable 100%",
    "ddtrace-default": "ddtrace 1% (default)",
    "ddtrace-100": "ddtrace 100%",
    "ddlock-order": "ddlock 1% + lock order",
}
SHORT = {
    "native": "native", "ddlock-0": "ddlock 0%", "ddlock-default": "ddlock dflt",
    "ddlock-100": "ddlock 100%", "portable-default": "port. dflt",
    "portable-100": "port. 100%", "ddtrace-default": "ddtrace dflt",
    "ddtrace-100": "ddtrace 100%", "ddlock-order": "ddlock order",
}

# (key, row label, kind): kind "ns" (lower is better), "rate" (higher is
# better), "bytes".
ROWS = [
    ("with_lock", "`with lock:` Lock", "ns"),
    ("with_rlock", "`with lock:` RLock", "ns"),
    ("acqrel_lock", "acquire()+release() Lock", "ns"),
    ("acqrel_rlock", "acquire()+release() RLock", "ns"),
    ("create_lock", "threading.Lock()", "ns"),
    ("create_rlock", "threading.RLock()", "ns"),
    ("deep10_with_lock", "`with lock:` 10-deep stack", "ns"),
    ("held_probe", "contended path: acquire(timeout=0) of a held Lock", "ns"),
    ("with_lock_3held", "`with lock:` 3 locks held", "ns"),
    ("contention4", "4 threads contending (kops/s)", "rate"),
    ("cond_roundtrip", "Condition wait/notify round trip, 2 threads", "ns"),
    ("queue_roundtrip", "queue.Queue put/get round trip, 2 threads", "ns"),
    ("size_lock.getsizeof", "sys.getsizeof(Lock) (B)", "bytes"),
    ("size_rlock.getsizeof", "sys.getsizeof(RLock) (B)", "bytes"),
    ("size_lock.traced", "tracemalloc B/Lock", "bytes"),
    ("size_rlock.traced", "tracemalloc B/RLock", "bytes"),
]
BASIC = ["with_lock", "with_rlock", "acqrel_lock", "acqrel_rlock"]

# Only ddtrace's lock collector: every other profiler collector off, and the
# background services that are not the profiler (telemetry, remote config,
# crash tracker) off too, so they add no noise. Uploads go to a closed local
# port and fail fast. (ddtrace 4.x always exports through libdatadog; the old
# DD_PROFILING_EXPORT_LIBDD_ENABLED switch no longer exists.)
DDTRACE_ENV = {
    "DD_PROFILING_ENABLED": "true",
    "DD_PROFILING_LOCK_ENABLED": "true",
    "DD_PROFILING_STACK_ENABLED": "false",
    "DD_PROFILING_MEMORY_ENABLED": "false",
    "DD_PROFILING_HEAP_SAMPLE_SIZE": "0",
    "DD_PROFILING_EXCEPTION_ENABLED": "false",
    "DD_PROFILING_PYTORCH_ENABLED": "false",
    "DD_PROFILING_UPLOAD_INTERVAL": "600",
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_CRASHTRACKING_ENABLED": "false",
}


def closed_port():
    """A local TCP port nobody listens on (bound, then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORTABLE_BUILD = os.path.join(REPO, "build", "bench-portable")


def build_portable(ddlock_path):
    """The portable build of ddlock_path's sources into PORTABLE_BUILD (the
    public-C-API path, forced with DDLOCK_PORTABLE=1). None or the error."""
    pkg = os.path.join(PORTABLE_BUILD, "ddlock")
    os.makedirs(pkg, exist_ok=True)
    for name in os.listdir(os.path.join(ddlock_path, "ddlock")):
        if name.endswith(".py"):
            with open(os.path.join(ddlock_path, "ddlock", name), "rb") as src, \
                    open(os.path.join(pkg, name), "wb") as dst:
                dst.write(src.read())
    env = dict(os.environ, DDLOCK_PORTABLE="1",
               CFLAGS=os.environ.get("CFLAGS", "") + " -DDDL_PORTABLE=1")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force",
                        "--build-lib", PORTABLE_BUILD, "--build-temp",
                        os.path.join(REPO, "build", "bench-portable-tmp")],
                       cwd=ddlock_path, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True)
    if r.returncode != 0:
        return "portable build failed: " + r.stdout[-500:]
    return None


def child_env(config, ddtrace_path, port, ddlock_path=REPO):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DD_", "PYTHON"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    kind, pct = CONFIGS[config]
    if kind == "ddlock":
        env["PYTHONPATH"] = PORTABLE_BUILD if config.startswith("portable") else ddlock_path
    elif kind == "ddtrace":
        env["PYTHONPATH"] = ddtrace_path
        env.update(DDTRACE_ENV)
        env["DD_TRACE_AGENT_URL"] = "http://127.0.0.1:%d" % port
        if pct is not None:
            env["DD_PROFILING_CAPTURE_PCT"] = "%g" % pct
    return env


def run_one(config, quick, ddtrace_path, port, timeout, ddlock_path=REPO):
    cmd = [sys.executable, os.path.join(HERE, "workloads.py"), "--config", config]
    if quick:
        cmd.append("--quick")
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, env=child_env(config, ddtrace_path, port, ddlock_path),
                           cwd=HERE, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": config, "error": "timed out after %ds" % timeout}
    wall = time.monotonic() - t0
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        return {"config": config,
                "error": "exit %d, no result: %s" % (r.returncode, tail)}
    out = json.loads(lines[-1])
    out["wall_s"] = round(wall, 2)
    return out


def metric(run, key):
    res = run.get("results", {})
    if key in ("size_lock.getsizeof", "size_rlock.getsizeof",
               "size_lock.traced", "size_rlock.traced"):
        a, b = key.split(".")
        return res.get(a, {}).get(b)
    if key == "contention4":
        v = res.get(key, {}).get("ops_per_s")
        return None if v is None else v / 1000.0
    return res.get(key, {}).get("ns")


def summarize(runs):
    """config -> key -> {median, min, max, n}."""
    out = {}
    for config, rs in runs.items():
        ok = [r for r in rs if "results" in r]
        if not ok:
            continue
        out[config] = {}
        for key, _, _ in ROWS:
            vals = [v for v in (metric(r, key) for r in ok) if v is not None]
            if vals:
                out[config][key] = {"median": statistics.median(vals),
                                    "min": min(vals), "max": max(vals),
                                    "n": len(vals), "values": vals}
    return out


def med(summary, config, key):
    return summary.get(config, {}).get(key, {}).get("median")


# ---- targets ----------------------------------------------------------------

def targets(summary, ddtrace_why):
    T = []

    def add(tid, desc, value, ok, note=None):
        T.append({"id": tid, "target": desc, "value": value,
                  "status": "N/A" if ok is None else ("PASS" if ok else "MISS"),
                  "note": note})

    def ratio(config, key):
        a, b = med(summary, config, key), med(summary, "native", key)
        return None if a is None or not b else a / b

    names = dict((k, l) for k, l, _ in ROWS)
    for key in BASIC:
        r = ratio("ddlock-default", key)
        add("default<=1.0x", "ddlock default: %s <= 1.00x native" % names[key],
            None if r is None else "%.2fx" % r, None if r is None else r <= 1.0)
    for key in BASIC:
        r = ratio("portable-default", key)
        add("portable-default<=1.0x", "portable default: %s <= 1.00x native" % names[key],
            None if r is None else "%.2fx" % r, None if r is None else r <= 1.0)
    p100, i100 = (med(summary, c, "deep10_with_lock") for c in ("portable-100", "ddlock-100"))
    add("portable100<=2x", "portable 100%: 10-deep `with lock:` <= 2x the internal path",
        None if None in (p100, i100) else "%.2fx (%.0f vs %.0f ns)" % (p100 / i100, p100, i100),
        None if None in (p100, i100) else p100 / i100 <= 2.0)
    for key in BASIC:
        r = ratio("ddlock-0", key)
        add("0%<=0.95x", "ddlock 0%%: %s <= 0.95x native" % names[key],
            None if r is None else "%.2fx" % r, None if r is None else r <= 0.95)

    d100 = med(summary, "ddlock-100", "deep10_with_lock")
    add("100%deep<=1.5us", "ddlock 100%: 10-deep `with lock:` <= 1.5 us/pair",
        None if d100 is None else "%.0f ns" % d100,
        None if d100 is None else d100 <= 1500)

    t100 = med(summary, "ddtrace-100", "deep10_with_lock")
    if d100 is None or t100 is None:
        add("100%deep>=4x-ddtrace", "ddlock 100% 10-deep >= 4x faster than ddtrace 100%",
            None, None, ddtrace_why or "missing data")
    else:
        add("100%deep>=4x-ddtrace", "ddlock 100% 10-deep >= 4x faster than ddtrace 100%",
            "%.1fx (%.0f vs %.0f ns)" % (t100 / d100, t100, d100), t100 / d100 >= 4.0)

    for key in BASIC:
        nat = med(summary, "native", key)
        ours = med(summary, "ddlock-default", key)
        theirs = med(summary, "ddtrace-default", key)
        desc = "overhead at default, %s: ddtrace >= 10x ddlock (or ddlock <= 0)" % names[key]
        if None in (nat, ours, theirs):
            add("overhead-vs-ddtrace", desc, None, None,
                ddtrace_why if theirs is None else "missing data")
            continue
        o_ours, o_theirs = ours - nat, theirs - nat
        if o_ours <= 0:
            add("overhead-vs-ddtrace", desc,
                "ddlock %+.1f ns, ddtrace %+.1f ns" % (o_ours, o_theirs), True)
        else:
            add("overhead-vs-ddtrace", desc,
                "%.1fx (ddlock %+.1f ns, ddtrace %+.1f ns)" % (o_theirs / o_ours, o_ours, o_theirs),
                o_theirs / o_ours >= 10.0)

    # lock-order checking: every acquire checked (issue 19)
    d_order = med(summary, "ddlock-order", "with_lock_3held")
    d_native = med(summary, "native", "with_lock_3held")
    add("order<=1us", "ddlock lock order: `with lock:` with 3 locks held <= native + 1 us",
        None if None in (d_order, d_native) else "%+.0f ns (%.0f vs %.0f)"
        % (d_order - d_native, d_order, d_native),
        None if None in (d_order, d_native) else d_order - d_native <= 1000)

    r = ratio("ddlock-default", "create_lock")
    add("create<=2x", "ddlock default: threading.Lock() creation <= 2x native",
        None if r is None else "%.2fx" % r, None if r is None else r <= 2.0)

    r = ratio("ddlock-default", "contention4")
    add("contention>=0.95x", "ddlock default: 4-thread contention throughput >= 0.95x native",
        None if r is None else "%.2fx" % r, None if r is None else r >= 0.95)

    for key in ("cond_roundtrip", "queue_roundtrip"):
        r = ratio("ddlock-default", key)
        add("condwait<=1.1x", "ddlock default: %s <= 1.10x native" % names[key],
            None if r is None else "%.2fx" % r, None if r is None else r <= 1.10)

    for key, what in (("size_lock.getsizeof", "sys.getsizeof(Lock)"),
                      ("size_rlock.getsizeof", "sys.getsizeof(RLock)"),
                      ("size_lock.traced", "tracemalloc bytes per Lock"),
                      ("size_rlock.traced", "tracemalloc bytes per RLock")):
        a, b = med(summary, "ddlock-default", key), med(summary, "native", key)
        add("size<=+64B", "ddlock: %s <= native + 64 B" % what,
            None if None in (a, b) else "%+.0f B (%.0f vs %.0f)" % (a - b, a, b),
            None if None in (a, b) else a - b <= 64)
    return T


# ---- formatting -------------------------------------------------------------

def cell(summary, config, key, kind):
    v = med(summary, config, key)
    if v is None:
        return "-"
    nat = med(summary, "native", key)
    if kind == "bytes":
        s = "%.0f" % v
        if config != "native" and nat is not None:
            s += " (%+.0f)" % (v - nat)
        return s
    s = "%.1f" % v if v < 100 else "%.0f" % v
    if config != "native" and nat:
        s += " (%.2fx)" % (v / nat)
    return s


def spread_cell(summary, config, key):
    d = summary.get(config, {}).get(key)
    if d is None or not d["median"] or d["n"] < 2:
        return "-"
    return "%.0f%%" % (100.0 * (d["max"] - d["min"]) / d["median"])


def table(summary, configs, cellf, md):
    head = ["workload (ns/op unless noted)"] + [
        (LABELS if md else SHORT)[c] for c in configs]
    rows = [[label] + [cellf(summary, c, key, kind) for c in configs]
            for key, label, kind in ROWS]
    if md:
        lines = ["| " + " | ".join(head) + " |",
                 "|" + "|".join(["---"] + ["---:"] * len(configs)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = lambda r: "  ".join(  # noqa: E731
        (r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]))
        for i in range(len(r)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] +
                     [fmt(r) for r in rows])


def targets_text(T, md):
    if md:
        lines = ["| status | target | measured |", "|---|---|---|"]
        for t in T:
            v = t["value"] or ("n/a: " + t["note"] if t["note"] else "n/a")
            lines.append("| %s | %s | %s |" % (t["status"], t["target"], v))
        return "\n".join(lines)
    lines = []
    for t in T:
        v = t["value"] or ("n/a: " + t["note"] if t["note"] else "n/a")
        lines.append("  %-4s  %s: %s" % (t["status"], t["target"], v))
    return "\n".join(lines)


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ext", "ddlock"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# ---- main -------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="few rounds, small loops: a smoke test under a minute")
    ap.add_argument("--no-ddtrace", action="store_true",
                    help="do not install or run ddtrace")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds (default 7, --quick 2)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated subset of: " + ",".join(CONFIG_ORDER))
    ap.add_argument("--out", default=os.path.join(HERE, "results"),
                    help="directory for latest.md / latest.json")
    ap.add_argument("--ddlock-path", default=REPO,
                    help="directory holding the ddlock package to measure (default: "
                         "this checkout; point it at another build to compare)")
    ap.add_argument("--seed", type=int, default=20240601,
                    help="seed of the configuration order")
    args = ap.parse_args(argv)

    rounds = args.rounds or (2 if args.quick else 7)
    configs = CONFIG_ORDER if not args.configs else [
        c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            ap.error("unknown configuration %r" % c)
    if "native" not in configs:
        configs = ["native"] + configs  # every ratio needs it

    if any(c.startswith("portable") for c in configs):
        why = build_portable(os.path.abspath(args.ddlock_path))
        if why:
            print("NOTE: portable columns are missing: %s" % why, flush=True)
            configs = [c for c in configs if not c.startswith("portable")]

    ddtrace_path = ddtrace_version = None
    ddtrace_why = None
    want_ddtrace = [c for c in configs if CONFIGS[c][0] == "ddtrace"]
    if want_ddtrace:
        if args.no_ddtrace:
            ddtrace_why = "skipped (--no-ddtrace)"
        else:
            ddtrace_path, ddtrace_version, ddtrace_why = setup_ddtrace.ensure()
            if ddtrace_why:
                ddtrace_why = "ddtrace could not be installed: " + ddtrace_why
        if ddtrace_why:
            print("NOTE: ddtrace columns are missing: %s" % ddtrace_why, flush=True)
            configs = [c for c in configs if c not in want_ddtrace]

    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load0 is not None and load0 > (os.cpu_count() or 1) * 0.75:
        print("WARNING: load average %.1f on %d CPUs before starting: other work "
              "will inflate and scatter the timings" % (load0, os.cpu_count() or 1),
              flush=True)
    port = closed_port()
    timeout = 120 if args.quick else 300
    rng = random.Random(args.seed)
    base = list(configs)
    rng.shuffle(base)
    runs = {c: [] for c in configs}
    # config -> last failure; a configuration whose first run fails, or that
    # fails twice, is not run again (the rest of its rounds would fail alike)
    failed, nfail = {}, {}
    t_start = time.monotonic()
    print("ddlock benchmark: %d rounds x %d configurations%s, python %s"
          % (rounds, len(configs), " (quick)" if args.quick else "",
             platform.python_version()), flush=True)
    for rnd in range(rounds):
        k = rnd % len(base)
        order = base[k:] + base[:k]
        print("  round %d/%d:" % (rnd + 1, rounds), end="", flush=True)
        for c in order:
            if nfail.get(c, 0) >= 2 or (c in failed and not any(
                    "results" in x for x in runs[c])):
                continue
            r = run_one(c, args.quick, ddtrace_path, port, timeout,
                        os.path.abspath(args.ddlock_path))
            r["round"] = rnd + 1
            runs[c].append(r)
            if "error" in r:
                failed[c] = r["error"]
                nfail[c] = nfail.get(c, 0) + 1
                print(" %s[FAILED]" % c, end="", flush=True)
            else:
                print(" %s(%.1fs)" % (c, r["wall_s"]), end="", flush=True)
        print(flush=True)
    elapsed = time.monotonic() - t_start

    for c, why in failed.items():
        ok = sum("results" in x for x in runs[c])
        print("NOTE: %s failed %d time(s)%s: %s" % (
            LABELS[c], nfail[c], "" if ok else " and has no result", why), flush=True)
        if CONFIGS[c][0] == "ddtrace" and ddtrace_why is None and not ok:
            ddtrace_why = "ddtrace run failed: " + why
    shown = [c for c in configs if any("results" in r for r in runs[c])]
    shown.sort(key=CONFIG_ORDER.index)
    summary = summarize({c: runs[c] for c in shown})
    T = targets(summary, ddtrace_why)

    info = {}
    for c in shown:
        p = next(r["profiler"] for r in runs[c] if "results" in r)
        info[c] = {k: v for k, v in p.items() if k != "after"}
    depth = next((r["results"]["deep10_with_lock"].get("depth")
                  for r in runs["native"] if "results" in r), None)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "executable": sys.executable,
        "ddlock_rev": git_rev(),
        "ddlock_path": os.path.abspath(args.ddlock_path),
        "ddtrace_version": ddtrace_version,
        "ddtrace_missing": ddtrace_why,
        "cpu": cpu_model(),
        "ncpu": os.cpu_count(),
        "rounds": rounds,
        "quick": args.quick,
        "seed": args.seed,
        "elapsed_s": round(elapsed, 1),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "deep_stack_frames": depth,
        "profilers": info,
    }
    which = meta["ddlock_rev"] if meta["ddlock_path"] == REPO else \
        "from " + meta["ddlock_path"]
    header = ("ddlock %s, Python %s, %s (%d CPUs); ddtrace %s; %d rounds%s, "
              "median of per-process best; %.0f s; load average %s -> %s"
              % (which, meta["python"], meta["cpu"], meta["ncpu"] or 0,
                 ddtrace_version or "not run", rounds,
                 " (quick)" if args.quick else "", elapsed,
                 "?" if load0 is None else "%.1f" % load0,
                 "?" if meta["loadavg_end"] is None else "%.1f" % meta["loadavg_end"]))
    npass = sum(t["status"] == "PASS" for t in T)
    nmiss = sum(t["status"] == "MISS" for t in T)
    nna = sum(t["status"] == "N/A" for t in T)

    print()
    print(header)
    print("ratios are to native (ns/op: lower is better; kops/s: higher is better;"
          " bytes: difference to native)")
    print()
    print(table(summary, shown, cell, md=False))
    print()
    print("round-to-round spread ((max-min)/median):")
    print(table(summary, shown, lambda s, c, k, _: spread_cell(s, c, k), md=False))
    print()
    print("targets: %d PASS, %d MISS, %d N/A" % (npass, nmiss, nna))
    print(targets_text(T, md=False))
    if ddtrace_why:
        print("\nddtrace columns missing: %s" % ddtrace_why)

    os.makedirs(args.out, exist_ok=True)
    md = ["# ddlock benchmark", "", header, "",
          "Each cell: median over rounds of the per-process best, in ns per "
          "operation with the empty-loop cost subtracted, and the ratio to "
          "native. Contention is total throughput of 4 threads. Sizes are "
          "bytes (difference to native). The 10-deep row has %s Python "
          "frames on the stack at the `with`." % (depth or 10), "",
          table(summary, shown, cell, md=True), "",
          "## Targets (%d PASS, %d MISS, %d N/A)" % (npass, nmiss, nna), "",
          targets_text(T, md=True), "",
          "## Round-to-round spread ((max - min) / median)", "",
          table(summary, shown, lambda s, c, k, _: spread_cell(s, c, k), md=True), ""]
    if ddtrace_why:
        md += ["ddtrace columns missing: %s" % ddtrace_why, ""]
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "targets": T,
                   "runs": runs}, f, indent=1, sort_keys=True)
    print("\nwrote %s and latest.json" % os.path.relpath(
        os.path.join(args.out, "latest.md")))
    return 0 if "native" in shown else 1


if __name__ == "__main__":
    sys.exit(main())
