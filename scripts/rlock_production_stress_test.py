#!/usr/bin/env python3
"""Production stress test for ddlock's lock names — self-checking.

Runs the lock patterns of a real service (per-request local locks, a class
member, module globals, a name-mangled private member, anonymous locks,
re-entered RLocks, a Condition producer/consumer and one deliberately
contended lock) on several worker threads, with profiling started exactly as
in production: the environment is set first, then ``import ddlock.auto``.

At the end it stops the profiler, reads the pprof files it wrote and, when it
ran against a local receiver (``--test-agent-url``, a ddapm-test-agent), the
profiles that receiver got; then prints a per-lock summary and one verdict per
success criterion, and exits 1 if any failed:

  names visible, names distinguishable, no threading.py:... names, no
  addresses (shared with ``python -m ddlock check``), local / class-member /
  global / private names present, the contended lock tops wait time, and
  the upload carries the same names as the files.

    scripts/rlock_production_stress_test.py --duration 30 --workers 4 \\
        --test-agent-url http://127.0.0.1:8126

``scripts/run_rlock_production_stress_test.sh`` starts the receiver for you.
"""

import argparse
import base64
import json
import os
import sys
import tempfile
import time

SERVICE = "rlock-production-stress-test"
AGENT_ENV = ("DD_AGENT_HOST", "DD_TRACE_AGENT_URL", "DD_TRACE_AGENT_PORT", "DD_API_KEY")
DEFAULT_SOCKET = "/var/run/datadog/apm.socket"

# What each pattern must be called in the profiles (variable names).
EXPECTED = [
    ("local locks show variable names", ["request_lock", "response_lock"]),
    ("class members show attribute names", ["user_session_lock", "_Foo__lock", "registry_lock", "jobs_lock"]),
    ("globals show global names", ["GLOBAL_CACHE_LOCK", "global_stats_lock", "bottleneck_lock"]),
]
CONTENDED = "bottleneck_lock"
# issue 18: one thread holds bottleneck_lock in a slow function now and
# then; the waits it causes must name that holder and that function
SLOW_HOLDER = "slow-report-holder"
SLOW_FUNCTION = "slow_report_generation"


# ---------------------------------------------------------------------------
# Configuration: the environment is complete before ddlock is imported
# ---------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Stress ddlock with production lock patterns and verify the lock names "
                    "in its pprof files and in what a local agent received.")
    p.add_argument("--duration", type=float, default=120.0, help="seconds to run (default 120)")
    p.add_argument("--workers", type=int, default=8, help="worker threads (default 8)")
    p.add_argument("--capture-pct", type=float, default=None,
                   help="DD_PROFILING_CAPTURE_PCT (default: the environment's, else the profiler's 1%%)")
    p.add_argument("--upload-interval", type=float, default=10.0,
                   help="DD_PROFILING_UPLOAD_INTERVAL in seconds (default 10)")
    p.add_argument("--output", default=None,
                   help="DD_PROFILING_OUTPUT_PPROF prefix (default: a new temporary directory)")
    p.add_argument("--test-agent-url", default=None, metavar="URL",
                   help="base URL of a ddapm-test-agent: profiles are uploaded there and read back")
    p.add_argument("--progress", type=float, default=None, metavar="S",
                   help="seconds between progress lines (default: duration/6, at least 2)")
    args = p.parse_args(argv)
    if args.duration <= 0:
        p.error("--duration must be > 0")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.upload_interval <= 0:
        p.error("--upload-interval must be > 0")
    if args.capture_pct is not None and not 0 <= args.capture_pct <= 100:
        p.error("--capture-pct must be within 0..100")
    return args


def configure_environment(args):
    """Set the DD_* variables; return a description of the setup."""
    if args.output is None:
        args.output = os.path.join(tempfile.mkdtemp(prefix="rlock-stress-"), "rlock_stress_test")
    args.output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    os.environ["DD_PROFILING_OUTPUT_PPROF"] = args.output
    if args.capture_pct is not None:
        os.environ["DD_PROFILING_CAPTURE_PCT"] = "%g" % args.capture_pct
    os.environ["DD_PROFILING_UPLOAD_INTERVAL"] = "%g" % args.upload_interval
    os.environ["DD_SERVICE"] = SERVICE
    if args.test_agent_url:
        args.test_agent_url = args.test_agent_url.rstrip("/")
        os.environ["DD_TRACE_AGENT_URL"] = args.test_agent_url
        upload = "to the local receiver %s" % args.test_agent_url
    elif any(os.environ.get(v) for v in AGENT_ENV) or os.path.exists(DEFAULT_SOCKET):
        target = (os.environ.get("DD_TRACE_AGENT_URL") or os.environ.get("DD_AGENT_HOST")
                  or ("agentless intake (DD_API_KEY)" if os.environ.get("DD_API_KEY") else DEFAULT_SOCKET))
        upload = "to %s (not read back: no --test-agent-url)" % target
    else:
        os.environ.setdefault("DD_PROFILING_UPLOAD_ENABLED", "false")
        upload = "off (no agent: DD_AGENT_HOST, DD_TRACE_AGENT_URL, DD_API_KEY or --test-agent-url)"
    return upload


def _make_ddlock_importable():
    """Run from a source checkout: find ddlock next to scripts/."""
    import importlib.util

    if importlib.util.find_spec("ddlock") is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


if __name__ == "__main__":
    ARGS = parse_args(sys.argv[1:])
    UPLOAD_SETUP = configure_environment(ARGS)
    _make_ddlock_importable()

# Profiling starts here, as in a production service: one import, configured
# by the environment. Every lock below is created after it.
import ddlock.auto  # noqa: E402,F401
import threading  # noqa: E402

import ddlock  # noqa: E402

# ---------------------------------------------------------------------------
# The workload: the seed's lock patterns
# ---------------------------------------------------------------------------

GLOBAL_CACHE_LOCK = threading.RLock()  # global RLock guarding a shared cache
global_stats_lock = threading.Lock()  # global Lock guarding counters
bottleneck_lock = threading.Lock()  # the deliberately contended lock (~1 ms holds)

_cache = {}
_stats = {"requests": 0, "cache_hits": 0}


def cache_lookup(key):
    with GLOBAL_CACHE_LOCK:
        value = _cache.get(key)
        if value is None:
            with GLOBAL_CACHE_LOCK:  # re-entered by the fill path
                value = _cache[key] = key * 2
        else:
            with global_stats_lock:
                _stats["cache_hits"] += 1
    return value


def record_request():
    with global_stats_lock:
        _stats["requests"] += 1


def handle_request(worker_id, n):
    """Per-request local locks: new RLocks on every call (the seed's pattern)."""
    request_lock = threading.RLock()
    response_lock = threading.RLock()
    with request_lock:
        time.sleep(0.0005)
    with response_lock:
        time.sleep(0.0005)
    return (worker_id, n)


class SessionManager(object):
    """A class member lock."""

    def __init__(self):
        self.user_session_lock = threading.RLock()
        self.sessions = {}

    def touch(self, user):
        with self.user_session_lock:
            self.sessions[user] = self.sessions.get(user, 0) + 1
            return self.sessions[user]


class Foo(object):
    """A private (name-mangled) member: ``self.__lock`` is ``_Foo__lock``."""

    def __init__(self):
        self.__lock = threading.RLock()
        self.__count = 0

    def bump(self):
        with self.__lock:
            self.__count += 1
            return self.__count


class ConfigRegistry(object):
    """Nested re-entry of an RLock across methods."""

    def __init__(self):
        self.registry_lock = threading.RLock()
        self.values = {}

    def get(self, key):
        with self.registry_lock:
            if key not in self.values:
                self._load(key)
            return self.values[key]

    def _load(self, key):
        with self.registry_lock:  # already held by get(): re-entered
            self.values[key] = str(key)
            self._validate(key)

    def _validate(self, key):
        with self.registry_lock:  # third level
            assert key in self.values


class JobQueue(object):
    """Condition producer/consumer over an explicit Lock."""

    def __init__(self):
        self.jobs_lock = threading.Lock()
        self.jobs_ready = threading.Condition(self.jobs_lock)
        self.jobs = []
        self.done = 0

    def put(self, job):
        with self.jobs_ready:
            self.jobs.append(job)
            self.jobs_ready.notify()

    def get(self, timeout):
        with self.jobs_ready:
            if not self.jobs:
                self.jobs_ready.wait(timeout)
            if self.jobs:
                self.done += 1
                return self.jobs.pop(0)
            return None


def anonymous_lock_work():
    with threading.RLock():  # anonymous: named by its creation site only
        pass


def worker(worker_id, deadline, halt, sessions, foo, registry, jobs, counts):
    n = 0
    while time.monotonic() < deadline and not halt.is_set():
        handle_request(worker_id, n)
        record_request()
        cache_lookup(n % 64)
        sessions.touch("user-%d" % (n % 16))
        foo.bump()
        registry.get(n % 32)
        anonymous_lock_work()
        jobs.put((worker_id, n))
        with bottleneck_lock:  # every worker funnels through here
            time.sleep(0.001)
        n += 1
    counts[worker_id] = n


def slow_report_generation():
    """Holds the contended lock for a long time (the holder waits name)."""
    with bottleneck_lock:
        time.sleep(0.05)


def slow_holder(deadline, halt):
    while time.monotonic() < deadline and not halt.is_set():
        slow_report_generation()
        time.sleep(0.2)


def consumer(jobs, stop):
    while not stop.is_set():
        jobs.get(timeout=0.05)
    while jobs.get(timeout=0) is not None:  # drain
        pass


def run_workload(duration, workers, progress_every):
    sessions, foo, registry, jobs = SessionManager(), Foo(), ConfigRegistry(), JobQueue()
    counts = [0] * workers
    stop = threading.Event()  # consumers
    halt = threading.Event()  # workers, on Ctrl-C
    start = time.monotonic()
    deadline = start + duration
    threads = [threading.Thread(target=worker, name="worker-%d" % i,
                                args=(i, deadline, halt, sessions, foo, registry, jobs, counts), daemon=True)
               for i in range(workers)]
    consumers = [threading.Thread(target=consumer, name="consumer-%d" % i, args=(jobs, stop), daemon=True)
                 for i in range(max(1, workers // 4))]
    threads.append(threading.Thread(target=slow_holder, name=SLOW_HOLDER, args=(deadline, halt),
                                    daemon=True))
    for t in threads + consumers:
        t.start()
    next_report = start + progress_every
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            now = time.monotonic()
            if now >= next_report and now < deadline:
                st = ddlock.stats()
                print("  t=%3.0fs  samples %d  exports %d  files %d  uploads ok %d failed %d"
                      % (now - start, st.get("samples_added", 0), st.get("exports", 0),
                         st.get("files_written", 0), st.get("uploads_ok", 0), st.get("uploads_failed", 0)),
                      flush=True)
                next_report += progress_every
    except KeyboardInterrupt:
        print("  interrupted: stopping the workers early", flush=True)
        halt.set()
    for t in threads:
        t.join()
    stop.set()
    with jobs.jobs_ready:
        jobs.jobs_ready.notify_all()
    for t in consumers:
        t.join(timeout=5)
    return {"iterations": sum(counts), "elapsed": time.monotonic() - start, "jobs_done": jobs.done}


# ---------------------------------------------------------------------------
# Reading back what the agent received
# ---------------------------------------------------------------------------


def parse_multipart(content_type, body):
    """``[(headers dict (lower-case keys), name, filename, payload bytes)]``
    of a multipart/form-data body (written by hand: payloads are binary)."""
    from email.message import Message

    ct = Message()
    ct["content-type"] = content_type
    boundary = ct.get_param("boundary")
    if not boundary or ct.get_content_type() != "multipart/form-data":
        raise ValueError("not multipart/form-data: %r" % content_type)
    delim = b"--" + boundary.encode("latin-1")
    data = b"\r\n" + body
    chunks = data.split(b"\r\n" + delim)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header/body separator")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip().lower()] = value.strip()
        disp = Message()
        disp["content-disposition"] = headers.get("content-disposition", "")
        name = disp.get_param("name", header="content-disposition")
        filename = disp.get_param("filename", header="content-disposition")
        parts.append((headers, name, filename, payload))
    if not parts:
        raise ValueError("multipart body without parts (boundary %r)" % boundary)
    return parts


def fetch_uploads(base_url, pid, expect_at_least=1, wait_s=10.0):
    """Profiles uploaded by process ``pid`` that the ddapm-test-agent at
    ``base_url`` stored: ``(list of (event dict, Profile), problems)``."""
    import urllib.request

    from ddlock import _pprof

    deadline = time.monotonic() + wait_s
    while True:
        problems = []
        found = []
        try:
            with urllib.request.urlopen(base_url + "/test/session/requests", timeout=10) as resp:
                stored = json.loads(resp.read().decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - reported as a failed criterion
            return [], ["cannot read %s/test/session/requests: %s" % (base_url, exc)]
        for req in stored:
            if req.get("method") != "POST" or "/profiling/v1/input" not in req.get("url", ""):
                continue
            headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
            try:
                body = base64.b64decode(req.get("body") or "")
                parts = parse_multipart(headers.get("content-type", ""), body)
            except ValueError as exc:
                problems.append("undecodable upload: %s" % exc)
                continue
            by_name = {name: (h, fn, payload) for h, name, fn, payload in parts}
            event = None
            if "event" in by_name:
                try:
                    event = json.loads(by_name["event"][2].decode("utf-8"))
                except ValueError as exc:
                    problems.append("event part is not JSON: %s" % exc)
                    continue
            tags = (event or {}).get("tags_profiler", "")
            if "process_id:%d" % pid not in tags.split(","):
                continue  # another process's upload
            if "profile.pprof" not in by_name:
                problems.append("upload without a profile.pprof part (parts: %s)" % ", ".join(map(str, by_name)))
                continue
            try:
                profile = _pprof.parse_bytes(by_name["profile.pprof"][2])
            except (_pprof.DecodeError, EOFError, OSError) as exc:
                problems.append("uploaded profile.pprof does not decode: %s" % exc)
                continue
            found.append((event, profile))
        if len(found) >= expect_at_least or time.monotonic() >= deadline:
            return found, problems
        time.sleep(0.25)


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------


def _creation_line(variable):
    """Line of ``<variable> = threading...`` in this file."""
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.startswith(variable + " = threading."):
                return n
    raise LookupError("no module-level %s in %s" % (variable, __file__))


def holder_criteria(file_profile, workers):
    """Issue 18: waits on bottleneck_lock name the slow holder, and the
    lock-holder-wait samples charge them to its slow function."""
    from ddlock import report

    names = ("waits on %s name their holder %s" % (CONTENDED, SLOW_HOLDER),
             "holder waits of %s are charged to %s" % (CONTENDED, SLOW_FUNCTION))
    if ddlock.build_info().get("frame_walk") == "public":
        return [report.Criterion(n, None, "portable build: a Lock's holder is unknown") for n in names]
    if workers < 1:
        return [report.Criterion(n, None, "needs at least 1 worker") for n in names]
    site = "%s:%d" % (os.path.basename(__file__), _creation_line(CONTENDED))
    ours = [s for s in file_profile.samples
            if report.parse_lock_name(str(s.labels.get("lock name", ""))).site == site]
    waits = [s for s in ours if s.values[file_profile.value_index("lock-acquire-wait")] > 0]
    named = [s for s in waits if s.labels.get("holder thread name") == SLOW_HOLDER]
    held = [s for s in ours if s.values[file_profile.value_index("lock-holder-wait")] > 0
            and s.labels.get("thread name") == SLOW_HOLDER]
    in_fn = [s for s in held if SLOW_FUNCTION in [f.function_name.rsplit(".", 1)[-1] for f in s.frames]]
    vi = file_profile.value_index("lock-holder-wait")
    return [
        report.Criterion(names[0], bool(named), "%d of %d wait samples name %s" % (
            len(named), len(waits), SLOW_HOLDER)),
        report.Criterion(names[1], bool(in_fn), "%s of wait charged to %s in %s (%d samples)" % (
            report.format_ns(sum(s.values[vi] for s in in_fn)), SLOW_HOLDER, SLOW_FUNCTION,
            len(in_fn))),
    ]


def evaluate(file_profile, file_paths, uploads, upload_problems, args, stats, workers):
    from ddlock import report

    labels = report.lock_names(file_profile)
    criteria = [report.Criterion("profiler started by import ddlock.auto", bool(file_paths),
                                 "%d pprof file(s) written" % len(file_paths) if file_paths
                                 else "no pprof file with prefix %s (last error: %s)"
                                 % (args.output, stats.get("last_error") or "none"))]
    criteria += report.check_lock_names(labels, groups=EXPECTED)

    lock_stats = report.collect_lock_stats(file_profile)
    if workers >= 2 and lock_stats:
        # identified by its creation site, so that this measures wait time
        # even when names are missing
        site = "%s:%d" % (os.path.basename(__file__), _creation_line(CONTENDED))
        top = max(lock_stats.values(), key=lambda s: s.wait_ns)
        total_wait = sum(s.wait_ns for s in lock_stats.values())
        criteria.append(report.Criterion(
            "the contended %s tops wait time" % CONTENDED, top.name.site == site,
            "%s waited %s (%s of all wait)%s" % (
                top.label, report.format_ns(top.wait_ns), report._pct(top.wait_ns, total_wait),
                "" if top.name.site == site else "; expected the lock created at %s" % site)))
    else:
        criteria.append(report.Criterion("the contended %s tops wait time" % CONTENDED, None,
                                         "needs at least 2 workers"))

    criteria += holder_criteria(file_profile, workers)

    if args.test_agent_url:
        if uploads:
            upload_labels = set()
            for _, prof in uploads:
                upload_labels.update(report.lock_names(prof))
            c = report.compare_name_sets(labels, upload_labels)
            detail = "%s (%d upload(s) received, %d file(s) written)" % (c.detail, len(uploads), len(file_paths))
            if upload_problems:
                detail += "; problems: %s" % "; ".join(upload_problems[:3])
            criteria.append(report.Criterion(c.name, c.ok and not upload_problems, detail))
            services = {t for ev, _ in uploads for t in (ev or {}).get("tags_profiler", "").split(",")
                        if t.startswith("service:")}
            criteria.append(report.Criterion("uploads tagged service:%s" % SERVICE,
                                             services == {"service:" + SERVICE},
                                             ", ".join(sorted(services)) or "no service tag"))
        else:
            criteria.append(report.Criterion(
                "upload carries the same names as the files", False,
                "the receiver at %s holds no profile from this process (uploads ok %d, failed %d, last error: %s)%s"
                % (args.test_agent_url, stats.get("uploads_ok", 0), stats.get("uploads_failed", 0),
                   stats.get("last_error") or "none",
                   "; " + "; ".join(upload_problems[:3]) if upload_problems else "")))
    elif os.environ.get("DD_PROFILING_UPLOAD_ENABLED", "true").lower() in ("false", "0", "no", "off"):
        criteria.append(report.Criterion("upload carries the same names as the files", None,
                                         "uploads off (no agent configured)"))
    else:
        ok = stats.get("uploads_ok", 0) > 0
        criteria.append(report.Criterion(
            "uploads accepted by the agent", ok,
            "uploads ok %d, failed %d, last HTTP status %s, last error: %s; names are not read back "
            "without --test-agent-url" % (stats.get("uploads_ok", 0), stats.get("uploads_failed", 0),
                                          stats.get("last_http_status", 0), stats.get("last_error") or "none")))
    return labels, lock_stats, criteria


def main():
    from ddlock import report, testing

    args = ARGS
    capture = os.environ.get("DD_PROFILING_CAPTURE_PCT")
    capture = capture + "%" if capture else "1% (default)"
    print("rlock production stress test: %g s, %d workers, capture %s, upload interval %g s"
          % (args.duration, args.workers, capture, args.upload_interval))
    print("  pprof files: %s.<pid>.<seq>.pprof" % args.output)
    print("  upload:      %s" % UPLOAD_SETUP)
    if os.environ.get("DD_PROFILING_LOCK_NAME_RESOLUTION", "").strip().lower() in ("0", "false", "no", "off"):
        print("  note: DD_PROFILING_LOCK_NAME_RESOLUTION=%s (lock names are file:line only)"
              % os.environ["DD_PROFILING_LOCK_NAME_RESOLUTION"])
    if not ddlock.is_running():
        print("FAIL  profiler started by import ddlock.auto: ddlock is not running "
              "(see the warning above)")
        return 1
    progress = args.progress or max(2.0, args.duration / 6.0)
    work = run_workload(args.duration, args.workers, progress)
    print("  ran %d iterations in %.1f s (%d jobs consumed)" % (work["iterations"], work["elapsed"],
                                                               work["jobs_done"]))

    # Export what is pending now, so that the counters include it (they go
    # away with the exporter at stop), then stop as a service would at exit.
    ddlock.flush()
    stats = ddlock.stats()
    ddlock.stop()
    print("  profiler: %d samples, %d dropped, %d exports, uploads ok %d failed %d%s"
          % (stats.get("samples_added", 0), stats.get("samples_dropped", 0), stats.get("exports", 0),
             stats.get("uploads_ok", 0), stats.get("uploads_failed", 0),
             ", last error: %s" % stats["last_error"] if stats.get("last_error") else ""))

    paths = testing.list_profile_files(args.output, pid=os.getpid())
    file_profile = report.load_profile(paths)
    uploads, problems = [], []
    if args.test_agent_url:
        uploads, problems = fetch_uploads(args.test_agent_url, os.getpid(), expect_at_least=max(1, len(paths)))
    labels, lock_stats, criteria = evaluate(file_profile, paths, uploads, problems, args, stats, args.workers)

    print()
    print("Locks in the pprof files (counts and times as the profiler reports them)")
    for line in report.render_lock_table(lock_stats, by="wait", top=None):
        print(line)
    if args.test_agent_url:
        print()
        print("Upload: %d profile%s from this process received by %s"
              % (len(uploads), "" if len(uploads) == 1 else "s", args.test_agent_url))
    print()
    print("Success criteria")
    print(report.format_criteria(criteria))
    failed = [c for c in criteria if c.ok is False]
    print()
    if failed:
        print("\n".join(report.wrap("lock names found (%d): %s" % (len(labels), ", ".join(labels) or "none"))))
        print("\n".join(report.wrap("RESULT: FAIL - %d of %d criteria failed: %s" % (
            len(failed), len(criteria), "; ".join(c.name for c in failed)))))
        return 1
    print("RESULT: PASS - %d criteria passed%s" % (
        sum(1 for c in criteria if c.ok), ", %d skipped" % sum(1 for c in criteria if c.ok is None)
        if any(c.ok is None for c in criteria) else ""))
    print("report: python -m ddlock report %s" % args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
