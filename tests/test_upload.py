"""Uploads end to end: a profiled program (a fresh subprocess) sends its
profiles to a real ddapm-test-agent, to loopback receivers over TCP, TLS and
a unix socket, and survives a down, failing, hanging or rude agent without
its own work being affected and without the API key ever showing up in its
output."""

import base64
import calendar
import glob
import gzip
import json
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid

import pytest

import ddlock
from conftest import REPO, python_env
from ddlock import _config, testing
from ddlock._pprof import parse_bytes
from _receivers import Receiver, free_port, free_ports

API_KEY = "ddlock-test-key-3f9a1c"
ITERS = 2000  # per thread and round; 4 threads
RFC3339_NS = re.compile(r"\A(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9})Z\Z")

# The profiled program: argv = rounds, mode ("flush": export after each
# round and report stats around it; "exit": only the export at exit).
PROGRAM = r'''
import json, logging, os, sys, threading, time
logging.basicConfig(level=logging.DEBUG if os.environ.get("DD_PROFILING_DEBUG") else logging.WARNING,
                    stream=sys.stderr, format="LOG %(name)s %(levelname)s %(message)s")
import ddlock

ROUNDS, MODE, ITERS = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def emit(tag, obj):
    print("@@%s %s" % (tag, json.dumps(obj)), flush=True)


ddlock.start(capture_pct=100)
app_lock = threading.Lock()  # !APP_LOCK!
shared_rlock = threading.RLock()  # !SHARED_RLOCK!
round_done = threading.Event()  # !ROUND_DONE!
total = [0]


def worker(n):
    for _ in range(n):
        with app_lock:
            total[0] += 1
        with shared_rlock:
            with shared_rlock:
                pass


if os.environ.get("DDLOCK_TEST_HANDOFF"):
    # one contended wait (issue 18): a lock-holder-wait sample in the upload
    handoff_lock = threading.Semaphore(1)  # its holder is known on every build
    held = threading.Event()

    def hold_handoff():
        with handoff_lock:
            held.set()
            time.sleep(0.2)

    th = threading.Thread(target=hold_handoff, name="handoff-holder")
    th.start()
    held.wait()
    with handoff_lock:
        pass
    th.join()

work = 0.0
paths = []
for _ in range(ROUNDS):
    t = time.monotonic()
    threads = [threading.Thread(target=worker, args=(ITERS,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    work += time.monotonic() - t
    round_done.wait(0.001)  # a condition wait (timeout)
    if MODE == "flush":
        emit("before", ddlock.stats())
        paths += ddlock.flush()
        emit("after", ddlock.stats())
emit("result", {"total": total[0], "expected": ROUNDS * ITERS * 4, "work_s": work,
                "pid": os.getpid(), "paths": paths})
'''


# ---------------------------------------------------------------------------
# Running the program
# ---------------------------------------------------------------------------

class Run(object):
    def __init__(self, proc, wall, t_start, t_end):
        self.proc = proc
        self.wall = wall
        self.t_start = t_start  # wall clock (epoch ns) around the run
        self.t_end = t_end
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.before, self.after, self.result = [], [], None
        for line in proc.stdout.splitlines():
            tag, _, payload = line.partition(" ")
            if tag == "@@before":
                self.before.append(json.loads(payload))
            elif tag == "@@after":
                self.after.append(json.loads(payload))
            elif tag == "@@result":
                self.result = json.loads(payload)

    def warnings(self):
        return [line for line in self.stderr.splitlines()
                if line.startswith("LOG ddlock WARNING")]

    def describe(self):
        return "--- stdout\n%s\n--- stderr\n%s" % (self.stdout, self.stderr)


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return str(path)


def marker_line(path, marker):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if marker in line:
                return i
    raise AssertionError(marker)


def run_program(program, env, rounds=1, mode="flush", timeout=60):
    env = dict(env)
    t_start = time.time_ns()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, program, str(rounds), mode, str(ITERS)], env=python_env(env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        timeout=timeout, cwd=REPO)
    wall = time.monotonic() - t0
    run = Run(proc, wall, t_start, time.time_ns())
    assert proc.returncode == 0, "program failed (%d)\n%s" % (proc.returncode, run.describe())
    assert "Traceback" not in proc.stderr, run.describe()
    assert run.result is not None, run.describe()
    # the application's own work completed, whatever the uploads did
    assert run.result["total"] == run.result["expected"], run.describe()
    return run


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """Work time of one round with uploads disabled."""
    path = tmp_path_factory.mktemp("baseline") / "prog.py"
    path.write_text(PROGRAM)
    run = run_program(str(path), {"DD_PROFILING_UPLOAD_ENABLED": "false"}, rounds=1, mode="flush")
    return run.result["work_s"]


def assert_work_unaffected(run, baseline, rounds=1):
    # generous: the point is that a failing upload never blocks the program
    per_round = run.result["work_s"] / rounds
    assert per_round <= 3 * baseline + 1.0, (per_round, baseline, run.describe())


def upload_counters(stats):
    return {k: stats[k] for k in ("exports", "uploads_ok", "uploads_failed", "upload_retries",
                                  "last_http_status")}


# ---------------------------------------------------------------------------
# Request checks
# ---------------------------------------------------------------------------

class Part(object):
    def __init__(self, headers, data):
        self.headers = headers
        self.data = data
        disp = headers.get("content-disposition", "")
        params = dict(re.findall(r';\s*([a-zA-Z]+)="([^"]*)"', disp))
        self.disposition = disp.split(";", 1)[0].strip()
        self.name = params.get("name")
        self.filename = params.get("filename")
        self.content_type = headers.get("content-type")


def parse_multipart(body, boundary):
    """Strict multipart/form-data parser (RFC 7578 / RFC 2046 framing)."""
    delim = b"--" + boundary.encode("ascii")
    assert body.startswith(delim + b"\r\n"), body[:200]
    assert body.endswith(b"\r\n" + delim + b"--\r\n") or body.endswith(b"\r\n" + delim + b"--"), \
        body[-200:]
    inner = body[len(delim) + 2:body.rindex(b"\r\n" + delim + b"--")]
    parts = []
    for chunk in inner.split(b"\r\n" + delim + b"\r\n"):
        head, sep, data = chunk.partition(b"\r\n\r\n")
        assert sep, chunk[:200]
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, data))
    return parts


def request_parts(req):
    m = re.search(r'boundary="?([^";]+)"?', req.header("Content-Type") or "")
    assert m, req.headers
    return parse_multipart(req.body, m.group(1))


def rfc3339_ns(text):
    m = RFC3339_NS.match(text)
    assert m, "not RFC 3339 with nanoseconds and Z: %r" % text
    secs = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return secs * 10**9 + int(m.group(2))


def parse_tags(text):
    tags = []
    for item in text.split(","):
        assert item and ":" in item, "malformed tag %r in %r" % (item, text)
        key, _, value = item.partition(":")
        tags.append((key, value))
    return tags


def check_event(event, pid, run, extra_tags=(), service=None):
    assert sorted(event) == sorted(["attachments", "tags_profiler", "start", "end", "family",
                                    "version", "endpoint_counts", "internal", "info"]), event
    assert event["attachments"] == ["profile.pprof"]
    assert event["family"] == "python"
    assert event["version"] == "4"
    assert event["endpoint_counts"] is None
    assert isinstance(event["internal"], dict)
    assert isinstance(event["info"], dict)
    start, end = rfc3339_ns(event["start"]), rfc3339_ns(event["end"])
    assert end > start
    assert run.t_start - 5 * 10**9 <= start and end <= run.t_end + 5 * 10**9, (event, run.t_start)

    tags = parse_tags(event["tags_profiler"])
    single = {}
    for key in ("service", "env", "version", "language", "runtime", "runtime-id",
                "runtime_version", "profiler_version", "process_id"):
        values = [v for k, v in tags if k == key]
        assert len(values) <= 1, (key, tags)
        if values:
            single[key] = values[0]
    assert single["language"] == "python"
    assert single["runtime"] == "CPython"
    assert str(uuid.UUID(single["runtime-id"])) == single["runtime-id"]
    assert single["runtime_version"] == platform.python_version()
    assert single["profiler_version"] == ddlock.__version__
    assert single["process_id"] == str(pid)
    for key, value in (service or {}).items():
        assert single.get(key) == value, (key, tags)
    for tag in extra_tags:
        assert tuple(tag.split(":", 1)) in tags, (tag, tags)
    return start, end, single


def check_upload(headers, body, run, program, api_key=None, pprof_file=None, extra_tags=(),
                 service=None):
    """Everything about one request but its URL; returns (event, profile, tags)."""
    h = {}
    for name, value in headers:
        h.setdefault(name.lower(), value)
    ctype = h.get("content-type", "")
    m = re.match(r'multipart/form-data;\s*boundary="?([^";]+)"?\Z', ctype)
    assert m, ctype
    assert h.get("dd-evp-origin") == "ddlock"
    assert h.get("dd-evp-origin-version") == ddlock.__version__
    assert h.get("user-agent") == "ddlock/%s" % ddlock.__version__
    assert h.get("connection", "").lower() == "close"
    if api_key is None:
        assert "dd-api-key" not in h
    else:
        assert h.get("dd-api-key") == api_key
    if "content-length" in h:
        assert int(h["content-length"]) == len(body)

    parts = parse_multipart(body, m.group(1))
    assert [p.name for p in parts] == ["event", "profile.pprof"]
    event_part, pprof_part = parts
    assert event_part.disposition == "form-data"
    assert event_part.filename == "event.json"
    assert event_part.content_type == "application/json"
    assert pprof_part.filename == "profile.pprof"

    event = json.loads(event_part.data.decode("utf-8"))
    pid = run.result["pid"]
    start, end, tags = check_event(event, pid, run, extra_tags, service)

    data = pprof_part.data
    assert data[:2] == b"\x1f\x8b", "profile part is not gzip"
    profile = parse_bytes(data)
    assert profile.time_nanos == start and profile.duration_nanos == end - start
    names = testing.get_lock_names(profile)
    app = "prog.py:%d:app_lock" % marker_line(program, "!APP_LOCK!")
    rlock = "prog.py:%d:shared_rlock" % marker_line(program, "!SHARED_RLOCK!")
    assert app in names and rlock in names, names
    acquires = sum(testing.get_sample_value(profile, s, "lock-acquire")
                   for s in testing.get_samples_with_lock_name(profile, app))
    assert acquires == 4 * ITERS  # one round per export, every acquire sampled
    if pprof_file is not None:
        with open(pprof_file, "rb") as f:
            assert f.read() == data, "uploaded profile differs from the file written"
    return event, profile, tags


# ---------------------------------------------------------------------------
# The real ddapm-test-agent
# ---------------------------------------------------------------------------

def _works(cmd):
    try:
        return subprocess.run(cmd + ["--version"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=60,
                              env=_tool_env()).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _tool_env():
    """Environment for helper processes that are not under test (the agent,
    openssl): no DD_* settings, no sanitizer runtime preloaded."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("DD_") and k not in (
                "PYTHONPATH", "LD_PRELOAD", "PYTHONMALLOC", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


def find_test_agent_command():
    """How to start ddapm-test-agent: next to this interpreter, on PATH, or as
    a module of any python3 that has it (it is a separate process)."""
    candidates = [[os.path.join(os.path.dirname(sys.executable), "ddapm-test-agent")]]
    found = shutil.which("ddapm-test-agent")
    if found:
        candidates.append([found])
    # make deps installs it for python3 only; under pyenv, any version that has it
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for path in sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin",
                                              "ddapm-test-agent"))):
        candidates.append([path])
    for py in (sys.executable, shutil.which("python3"), shutil.which("python3.11")):
        if py:
            candidates.append([py, "-m", "ddapm_test_agent.agent"])
    for cmd in candidates:
        if (len(cmd) > 1 or os.access(cmd[0], os.X_OK)) and _works(cmd):
            return cmd
    return None


@pytest.fixture(scope="module")
def ddapm_agent(tmp_path_factory):
    cmd = find_test_agent_command()
    if cmd is None:
        pytest.skip("ddapm-test-agent is not installed (make deps, or "
                    "python3 -m pip install ddapm-test-agent)")
    work = tmp_path_factory.mktemp("test-agent")
    port, otlp_http, otlp_grpc = free_ports(3)
    log_path = work / "agent.log"
    with open(str(log_path), "wb") as log:
        proc = subprocess.Popen(
            cmd + ["--port=%d" % port, "--host=127.0.0.1", "--otlp-http-port=%d" % otlp_http,
                   "--otlp-grpc-port=%d" % otlp_grpc, "--snapshot-dir=%s" % work,
                   "--log-level=WARNING"],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(work), env=_tool_env())
    base = "http://127.0.0.1:%d" % port
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail("ddapm-test-agent exited (%s):\n%s" % (proc.returncode,
                                                                   log_path.read_text()))
            try:
                with urllib.request.urlopen(base + "/test/session/requests", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("ddapm-test-agent did not answer:\n%s" % log_path.read_text())
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def agent_requests(base, path):
    with urllib.request.urlopen(base + "/test/session/requests", timeout=10) as r:
        reqs = json.loads(r.read().decode("utf-8"))
    return [q for q in reqs if q["url"].split("?", 1)[0].endswith(path)]


def test_upload_to_ddapm_test_agent(ddapm_agent, program, prefix):
    with urllib.request.urlopen(ddapm_agent + "/test/session/start", timeout=10) as r:
        assert r.status == 200
    env = {"DD_TRACE_AGENT_URL": ddapm_agent, "DD_PROFILING_OUTPUT_PPROF": prefix,
           "DD_SERVICE": "lock-svc", "DD_ENV": "upload-test", "DD_VERSION": "1.2.3",
           "DD_TAGS": "team:locks, tier:backend region:eu-west", "DDLOCK_TEST_HANDOFF": "1"}
    run = run_program(program, env, rounds=1)
    counters = upload_counters(run.after[-1])
    assert counters == {"exports": 1, "uploads_ok": 1, "uploads_failed": 0, "upload_retries": 0,
                        "last_http_status": 200}, run.describe()
    assert run.after[-1]["files_written"] == 1
    assert len(run.result["paths"]) == 1
    assert run.warnings() == [], run.describe()

    reqs = agent_requests(ddapm_agent, "/profiling/v1/input")
    assert len(reqs) == 1, reqs
    req = reqs[0]
    assert req["method"] == "POST"
    assert req["url"] == ddapm_agent + "/profiling/v1/input"
    body = base64.b64decode(req["body"])
    _, profile, _ = check_upload(
        list(req["headers"].items()), body, run, program, pprof_file=run.result["paths"][0],
        extra_tags=("team:locks", "tier:backend", "region:eu-west"),
        service={"service": "lock-svc", "env": "upload-test", "version": "1.2.3"})
    # the holder of the contended wait (issue 18) went up with the profile
    # (other contended waits of the program, e.g. its workers' on a slow
    # machine, may be charged to other holders too)
    held = [s for s in profile.samples_with_value("lock-holder-wait")
            if s.labels.get("thread name") == "handoff-holder"]
    assert held, profile.samples
    assert any("hold_handoff" in [ln.function_name for loc in s.locations for ln in loc.lines]
               for s in held)
    assert any(s.labels.get("holder thread name") == "handoff-holder"
               for s in profile.samples_with_value("lock-acquire-wait"))
    # the condition-wait sample types went with it (issue 25)
    assert [(vt.type, vt.unit) for vt in profile.sample_types][-2:] == [
        (testing.CONDITION_WAIT, "count"), (testing.CONDITION_WAIT_TIME, "nanoseconds")]
    waited = testing.get_samples_with_lock_name(
        profile, "prog.py:%d:round_done" % marker_line(program, "!ROUND_DONE!"))
    assert [s.labels.get("wait outcome") for s in waited] == ["timeout"]
    assert profile.total(testing.CONDITION_WAIT, waited) == 1
    assert profile.total(testing.CONDITION_WAIT_TIME, waited) >= 1000000


# ---------------------------------------------------------------------------
# Agent URLs with credentials and a query
# ---------------------------------------------------------------------------

URL_SECRETS = ("hunter2pw", "tok7q")


def secret_url(base):
    """base (http://host:port) with a user, a password and a query token."""
    return "http://ddlock:%s@%s/?token=%s" % (URL_SECRETS[0], base[len("http://"):], URL_SECRETS[1])


def assert_no_url_secret(run):
    for name, text in (("stdout (stats)", run.stdout), ("stderr (logs)", run.stderr)):
        for needle in URL_SECRETS:
            assert needle not in text, "%s in %s:\n%s" % (needle, name, run.describe())


def test_agent_url_with_credentials_and_query(ddapm_agent, program, prefix):
    with urllib.request.urlopen(ddapm_agent + "/test/session/start", timeout=10) as r:
        assert r.status == 200
    env = {"DD_TRACE_AGENT_URL": secret_url(ddapm_agent), "DD_PROFILING_OUTPUT_PPROF": prefix,
           "DD_PROFILING_DEBUG": "true"}
    run = run_program(program, env, rounds=1)
    assert upload_counters(run.after[-1]) == {"exports": 1, "uploads_ok": 1, "uploads_failed": 0,
                                              "upload_retries": 0, "last_http_status": 200}, run.describe()
    reqs = agent_requests(ddapm_agent, "/profiling/v1/input")
    assert len(reqs) == 1, reqs
    # the endpoint path goes before the query, which is kept
    assert reqs[0]["url"] == ddapm_agent + "/profiling/v1/input?token=" + URL_SECRETS[1]
    headers = {k.lower(): v for k, v in reqs[0]["headers"].items()}
    assert headers["authorization"] == "Basic " + base64.b64encode(
        ("ddlock:%s" % URL_SECRETS[0]).encode()).decode()
    # shown redacted, never whole
    shown = "http://***@%s/profiling/v1/input?token=***" % ddapm_agent[len("http://"):]
    assert "upload %s" % shown in run.stderr, run.describe()
    assert "profile uploaded to %s: HTTP 200" % shown in run.stderr, run.describe()
    assert_no_url_secret(run)


def test_agent_url_secrets_not_in_failures(program, baseline):
    base = "http://127.0.0.1:%d" % free_port()  # connection refused
    run = run_program(program, {"DD_TRACE_AGENT_URL": secret_url(base), "DD_PROFILING_DEBUG": "true"})
    assert_work_unaffected(run, baseline)
    last = run.after[-1]
    assert last["uploads_failed"] == 1, run.describe()
    shown = "http://***@%s/profiling/v1/input?token=***" % base[len("http://"):]
    assert last["last_error"].endswith(" to " + shown), last["last_error"]
    assert "curl error 7" in last["last_error"]
    assert shown in "".join(run.warnings()), run.describe()
    assert_no_url_secret(run)


def test_agent_url_config():
    def target(url):
        return _config.from_env(environ={"DD_TRACE_AGENT_URL": url}).upload_target()[0]

    assert target("http://h:1") == "http://h:1/profiling/v1/input"
    assert target("http://h:1/") == "http://h:1/profiling/v1/input"
    assert target("http://h:1/agent/?a=1&b=2#x") == "http://h:1/agent/profiling/v1/input?a=1&b=2"
    assert target("http://u:p@[::1]:8126?t=1") == "http://u:p@[::1]:8126/profiling/v1/input?t=1"
    redact = _config.redact_url
    assert redact("http://u:p@h:1/x?token=t&flag&e=") == "http://***@h:1/x?token=***&***&e=***"
    assert redact("https://h/api/v2/profile") == "https://h/api/v2/profile"
    assert redact("http://a@b@h/p?k=v#frag") == "http://***@h/p?k=***"
    # a malformed URL is a ValueError at start() that does not show the password
    for bad in ("http://u:hunter2pw@h:99999/", "http://u:hunter2pw@:80/", "ftp://u:hunter2pw@h/"):
        with pytest.raises(ValueError, match="DD_TRACE_AGENT_URL") as info:
            _config.from_env(environ={"DD_TRACE_AGENT_URL": bad})
        assert "hunter2pw" not in str(info.value)
    cfg = _config.from_env(environ={}, strict=False, overrides={"agent_url": "http://u:hunter2pw@h:x/"})
    assert cfg.agent_url is None and "hunter2pw" not in " ".join(cfg.warnings), cfg.warnings


# ---------------------------------------------------------------------------
# Unix socket
# ---------------------------------------------------------------------------

def test_upload_over_unix_socket(program, prefix):
    sockdir = tempfile.mkdtemp(prefix="ddl-", dir="/tmp")  # sun_path is short
    try:
        with Receiver(unix_path=os.path.join(sockdir, "apm.sock")) as rcv:
            run = run_program(program, {"DD_TRACE_AGENT_URL": rcv.url,
                                        "DD_PROFILING_OUTPUT_PPROF": prefix}, rounds=2)
        assert upload_counters(run.after[-1]) == {
            "exports": 2, "uploads_ok": 2, "uploads_failed": 0, "upload_retries": 0,
            "last_http_status": 200}, run.describe()
        assert len(rcv.requests) == 2, rcv.requests
        events = []
        for req, path in zip(rcv.requests, run.result["paths"]):
            assert (req.method, req.path) == ("POST", "/profiling/v1/input")
            assert req.header("Host") == "localhost"
            event, _, tags = check_upload(req.headers, req.body, run, program, pprof_file=path)
            events.append((event, tags))
        # one process: one runtime-id; the second profile starts where the first ended
        (e1, t1), (e2, t2) = events
        assert t1["runtime-id"] == t2["runtime-id"]
        assert rfc3339_ns(e2["start"]) >= rfc3339_ns(e1["end"])
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Faults: the program's work is never affected
# ---------------------------------------------------------------------------

def test_agent_down(program, baseline):
    url = "http://127.0.0.1:%d" % free_port()  # nobody listens: connection refused
    run = run_program(program, {"DD_TRACE_AGENT_URL": url, "DD_PROFILING_UPLOAD_INTERVAL": "0.25"},
                      rounds=3)
    assert_work_unaffected(run, baseline, rounds=3)
    for before, after in zip(run.before, run.after):
        assert after["uploads_failed"] > before["uploads_failed"], run.describe()
    last = run.after[-1]
    assert last["uploads_ok"] == 0
    assert last["exports"] >= 3
    # every export tried and failed (a periodic one may have just begun)
    assert last["exports"] - 1 <= last["uploads_failed"] <= last["exports"], run.describe()
    assert last["last_http_status"] == 0
    assert "connect" in last["last_error"].lower(), last["last_error"]
    # logged once, although every export (and the one at exit) failed
    warnings = run.warnings()
    assert len(warnings) == 1, run.describe()
    assert "upload-connect" in warnings[0]


def test_http_500_then_success_is_retried(program, baseline):
    with Receiver([500, 200]) as rcv:
        run = run_program(program, {"DD_TRACE_AGENT_URL": rcv.url})
    assert_work_unaffected(run, baseline)
    assert upload_counters(run.before[0]) == {"exports": 0, "uploads_ok": 0, "uploads_failed": 0,
                                              "upload_retries": 0, "last_http_status": 0}
    assert upload_counters(run.after[0]) == {"exports": 1, "uploads_ok": 1, "uploads_failed": 0,
                                             "upload_retries": 1, "last_http_status": 200}
    assert [r.action for r in rcv.requests] == [500, 200]
    # the same profile sent again (each attempt has its own boundary)
    first, second = [[(p.name, p.data) for p in request_parts(r)] for r in rcv.requests]
    assert first == second
    check_upload(rcv.requests[1].headers, rcv.requests[1].body, run, program)
    assert run.warnings() == [], run.describe()  # it got through in the end


def test_http_400_is_not_retried(program, baseline):
    with Receiver(default=400) as rcv:
        run = run_program(program, {"DD_TRACE_AGENT_URL": rcv.url})
    assert_work_unaffected(run, baseline)
    assert upload_counters(run.after[0]) == {"exports": 1, "uploads_ok": 0, "uploads_failed": 1,
                                             "upload_retries": 0, "last_http_status": 400}
    assert "HTTP 400" in run.after[0]["last_error"]
    assert len(rcv.requests) == 1 and rcv.connections == 1
    warnings = run.warnings()
    assert len(warnings) == 1 and "upload-http-4xx" in warnings[0], run.describe()


def test_hanging_agent_does_not_delay_exit(program, baseline):
    timeout_ms = 500
    plain = run_program(program, {"DD_PROFILING_UPLOAD_ENABLED": "false"}, mode="exit")
    with Receiver(default="hang") as rcv:
        run = run_program(program, {"DD_TRACE_AGENT_URL": rcv.url,
                                    "DD_PROFILING_API_TIMEOUT_MS": str(timeout_ms)}, mode="exit")
    assert_work_unaffected(run, baseline)
    assert len(rcv.requests) >= 1 and rcv.requests[0].action == "hang"
    delay = run.wall - plain.wall
    assert delay <= timeout_ms / 1000.0 + 1.0, (run.wall, plain.wall)
    warnings = run.warnings()
    assert len(warnings) == 1 and "upload-timeout" in warnings[0], run.describe()


def test_agent_closing_mid_request(program, baseline):
    with Receiver(default="close") as rcv:
        run = run_program(program, {"DD_TRACE_AGENT_URL": rcv.url})
    assert_work_unaffected(run, baseline)
    assert upload_counters(run.after[0]) == {"exports": 1, "uploads_ok": 0, "uploads_failed": 1,
                                             "upload_retries": 2, "last_http_status": 0}
    assert run.after[0]["last_error"]
    # the first attempt and both retries reached the receiver
    assert [(r.method, r.path, r.action) for r in rcv.requests] == \
        [("POST", "/profiling/v1/input", "close")] * 3
    assert len(run.warnings()) == 1, run.describe()


# ---------------------------------------------------------------------------
# Agent back-off: Retry-After
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_delays_the_retry(program, status):
    with Receiver([(status, {"Retry-After": "2"})], default=200) as rcv:
        run = run_program(program, {"DD_TRACE_AGENT_URL": rcv.url, "DD_PROFILING_UPLOAD_INTERVAL": "60"})
    assert upload_counters(run.after[0]) == {"exports": 1, "uploads_ok": 1, "uploads_failed": 0,
                                             "upload_retries": 1, "last_http_status": 200}, run.describe()
    assert len(rcv.requests) == 2, rcv.requests
    first, second = rcv.requests
    assert second.time - first.time >= 2.0, (first.time, second.time)
    assert run.warnings() == [], run.describe()


def test_retry_after_http_date_delays_the_retry(program):
    import email.utils

    not_before = []

    def date():  # 3 s from when the answer is sent, whole seconds
        t = int(time.time()) + 3
        not_before.append(t)
        return email.utils.formatdate(t, usegmt=True)

    with Receiver([(503, {"Retry-After": date})], default=200) as rcv:
        run = run_program(program, {"DD_TRACE_AGENT_URL": rcv.url, "DD_PROFILING_UPLOAD_INTERVAL": "60"})
    assert run.after[0]["uploads_ok"] == 1 and run.after[0]["upload_retries"] == 1, run.describe()
    assert len(rcv.requests) == 2, rcv.requests
    assert rcv.requests[1].time >= not_before[0], (rcv.requests[1].time, not_before)


def test_retry_after_beyond_the_interval_skips_uploads_until_then(tmp_path):
    # periodic exports every 0.3 s for 4 s; the first upload is told to
    # come back in 2 s: no request before that, then uploads resume
    prog = tmp_path / "busy.py"
    prog.write_text(textwrap.dedent("""
        import json, threading, time
        import ddlock
        ddlock.start(capture_pct=100, upload_interval=0.3)
        lock = threading.Lock()
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            with lock:
                pass
            time.sleep(0.001)
        ddlock.stop()
        print("@@stats " + json.dumps(ddlock.stats()), flush=True)
    """))
    with Receiver([(429, {"Retry-After": "2"})], default=200) as rcv:
        proc = subprocess.run([sys.executable, str(prog)], env=python_env({"DD_TRACE_AGENT_URL": rcv.url}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.split("@@stats ", 1)[1])
    times = [r.time for r in rcv.requests]
    assert len(times) >= 2, (times, stats)
    assert all(t >= times[0] + 2.0 for t in times[1:]), [t - times[0] for t in times]
    assert stats["uploads_skipped_retry_after"] >= 3, stats
    assert stats["uploads_ok"] >= 1 and stats["uploads_ok"] == len(times) - 1, (stats, len(times))
    # one warning for the 429, none for the skipped uploads
    assert proc.stderr.count("Retry-After") == 1, proc.stderr


# ---------------------------------------------------------------------------
# Agentless
# ---------------------------------------------------------------------------

def test_agentless_url_shape():
    env = {"DD_API_KEY": API_KEY, "DD_SITE": "datadoghq.eu"}
    assert _config.from_env(environ=env).upload_target() == (
        "https://intake.profile.datadoghq.eu/api/v2/profile", None, API_KEY)
    assert _config.from_env(environ={"DD_API_KEY": API_KEY}).upload_target()[0] == \
        "https://intake.profile.datadoghq.com/api/v2/profile"
    # an agent, when configured, wins: the key is not sent to it
    env["DD_TRACE_AGENT_URL"] = "http://127.0.0.1:8126"
    assert _config.from_env(environ=env).upload_target() == (
        "http://127.0.0.1:8126/profiling/v1/input", None, None)
    # the intake override replaces the whole URL and must be https
    env = {"DD_API_KEY": API_KEY, "DDLOCK_INTAKE_URL": "https://127.0.0.1:4443/api/v2/profile"}
    assert _config.from_env(environ=env).upload_target() == (
        "https://127.0.0.1:4443/api/v2/profile", None, API_KEY)
    with pytest.raises(ValueError, match="DDLOCK_INTAKE_URL"):
        _config.from_env(environ=dict(env, DDLOCK_INTAKE_URL="http://127.0.0.1:4443/x"))


def _make_cert(directory, name):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_tool_env())
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A throwaway self-signed server certificate, and an unrelated one."""
    d = str(tmp_path_factory.mktemp("certs"))
    server = _make_cert(d, "server")
    other = _make_cert(d, "other")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*server)
    return {"ctx": ctx, "ca": server[0], "wrong_ca": other[0]}


def assert_no_key_anywhere(run, outdir, key=API_KEY):
    needles = [key, key[-6:]]
    texts = {"stdout": run.stdout, "stderr": run.stderr}
    for name, text in texts.items():
        for needle in needles:
            assert needle not in text, "API key in %s:\n%s" % (name, text)
    files = 0
    for root, _, names in os.walk(outdir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            blobs = [data]
            if data[:2] == b"\x1f\x8b":
                blobs.append(gzip.decompress(data))
            for blob in blobs:
                for needle in needles:
                    assert needle.encode() not in blob, "API key in %s" % path
            files += 1
    return files


def agentless_env(url, ca, outdir):
    return {"DD_API_KEY": API_KEY, "DDLOCK_INTAKE_URL": url, "DDLOCK_CA_FILE": ca,
            "DD_PROFILING_OUTPUT_PPROF": os.path.join(outdir, "prof"),
            "DD_PROFILING_DEBUG": "true"}


def test_agentless_upload_over_tls(program, certs, tmp_path):
    outdir = str(tmp_path / "out")
    os.mkdir(outdir)
    with Receiver(ssl_context=certs["ctx"]) as rcv:
        run = run_program(program, agentless_env(rcv.url + "/api/v2/profile", certs["ca"],
                                                 outdir))
    assert upload_counters(run.after[0]) == {"exports": 1, "uploads_ok": 1, "uploads_failed": 0,
                                             "upload_retries": 0, "last_http_status": 200}
    assert len(rcv.requests) == 1, (rcv.requests, rcv.errors, rcv.tls_errors)
    req = rcv.requests[0]
    assert req.tls is not None and req.tls["version"].startswith("TLS"), req.tls
    assert (req.method, req.path) == ("POST", "/api/v2/profile")
    check_upload(req.headers, req.body, run, program, api_key=API_KEY,
                 pprof_file=run.result["paths"][0])
    assert API_KEY.encode() not in req.body  # only in its header
    assert "LOG ddlock DEBUG" in run.stderr  # debug logging was on
    assert assert_no_key_anywhere(run, outdir) >= 1


@pytest.mark.parametrize("case", ["untrusted-cert", "401", "403", "refused"])
def test_agentless_failures_never_leak_the_key(program, certs, tmp_path, baseline, case):
    outdir = str(tmp_path / "out")
    os.mkdir(outdir)
    ca = certs["wrong_ca"] if case == "untrusted-cert" else certs["ca"]
    status = int(case) if case.isdigit() else 200
    with Receiver(default=status, ssl_context=certs["ctx"]) as rcv:
        url = rcv.url + "/api/v2/profile"
        if case == "refused":
            url = "https://127.0.0.1:%d/api/v2/profile" % free_port()
        run = run_program(program, agentless_env(url, ca, outdir))
    assert_work_unaffected(run, baseline)
    stats = run.after[0]
    assert stats["uploads_ok"] == 0 and stats["uploads_failed"] == 1, run.describe()
    assert len(run.warnings()) == 1, run.describe()
    if case == "untrusted-cert":
        # verification is real: the handshake fails, nothing is sent, no retry
        assert stats["upload_retries"] == 0
        assert re.search(r"ssl|certificate", stats["last_error"], re.I), stats["last_error"]
        assert rcv.requests == [] and rcv.tls_errors, rcv.errors
    elif case == "refused":
        assert stats["upload_retries"] == 2
    else:
        assert stats["upload_retries"] == 0 and stats["last_http_status"] == status
        assert len(rcv.requests) == 1
        assert rcv.requests[0].header("DD-API-KEY") == API_KEY  # sent, and nowhere else
    assert "LOG ddlock DEBUG" in run.stderr
    assert assert_no_key_anywhere(run, outdir) >= 1
