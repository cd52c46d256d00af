"""End to end, as a service owner runs ddlock (issue 24): a Flask app under
gunicorn's threaded worker (1 worker, 8 threads), SQLAlchemy's QueuePool on
sqlite, a cachetools cache guarded by a module-level lock, access logging to
a file and the error log on stderr, all real (installed by `make deps`),
started through ``python -m ddlock.run`` and loaded by a bounded Python
client on loopback. The worker's profile, read back with go tool pprof,
places each lock:

- the access log's FileHandler lock and the error log's StreamHandler lock
  are two rows, both placed in ``logging``;
- the cache lock is named by the global it was bound to
  (``catalog_cache_lock``), not by the ``lock`` variable of cachetools'
  wrapper where it is acquired;
- the pool's lock is placed in ``sqlalchemy.util.queue``.
"""

import http.client
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import locals_readable, pprof_lock_rows, python_env
from ddlock import testing

for _lib in ("flask", "gunicorn", "cachetools", "sqlalchemy"):
    pytest.importorskip(_lib, reason="scripts/deps.sh installs it")

SERVICE = """\
import os
import threading

from cachetools import TTLCache, cached
from flask import Flask, jsonify
from sqlalchemy import create_engine, text
from sqlalchemy.pool import QueuePool

app = Flask(__name__)
engine = create_engine("sqlite:///" + os.environ["CATALOG_DB"], poolclass=QueuePool,
                       pool_size=2, max_overflow=0,
                       connect_args={"check_same_thread": False})
with engine.begin() as conn:
    conn.execute(text("create table if not exists item (id integer primary key, name text)"))
    conn.execute(text("delete from item"))
    for i in range(16):
        conn.execute(text("insert into item values (:i, :n)"), {"i": i, "n": "item-%d" % i})

catalog_cache = TTLCache(maxsize=8, ttl=0.01)
catalog_cache_lock = threading.Lock()  # !CREATE! cache


@cached(catalog_cache, lock=catalog_cache_lock)
def catalog_entry(item_id):
    with engine.connect() as conn:
        return conn.execute(text("select name from item where id = :i"), {"i": item_id}).scalar()


@app.route("/item/<int:item_id>")
def item(item_id):
    return jsonify(id=item_id, name=catalog_entry(item_id % 16))
"""

REQUESTS, CLIENTS = 400, 8


def _wait_for(path, pattern, proc, deadline):
    while time.monotonic() < deadline:
        with open(path) as f:
            m = re.search(pattern, f.read())
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(path) as f:
        raise AssertionError("no %r from gunicorn (rc %r):\n%s" % (pattern, proc.poll(), f.read()))


def _load(port):
    """REQUESTS GET requests from CLIENTS threads, keep-alive, each with a
    10 s timeout: the (request, status, body) of every failure."""
    failures = []

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for i in range(k, REQUESTS, CLIENTS):
            try:
                conn.request("GET", "/item/%d" % i)
                resp = conn.getresponse()
                body = resp.read().replace(b" ", b"")
                if resp.status != 200 or b'"name":"item-%d"' % (i % 16) not in body:
                    failures.append((i, resp.status, body[:200]))
            except (OSError, http.client.HTTPException) as e:
                failures.append((i, None, repr(e)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
    return failures


@pytest.mark.no_sanitize
def test_flask_gunicorn_sqlalchemy_cachetools_service(tmp_path):
    (tmp_path / "catalog_service.py").write_text(SERVICE)
    prefix = str(tmp_path / "prof")
    access = tmp_path / "access.log"
    errlog = tmp_path / "gunicorn.err"
    env = python_env({
        "CATALOG_DB": str(tmp_path / "catalog.db"),
        "DD_PROFILING_UPLOAD_ENABLED": "false",
        "HOME": str(tmp_path),  # gunicorn's control socket, if it makes one
    })
    cmd = [sys.executable, "-m", "ddlock.run", "--output", prefix, "--capture-pct", "100",
           sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread",
           "--threads", "8", "--bind", "127.0.0.1:0", "--access-logfile", str(access),
           "--chdir", str(tmp_path), "catalog_service:app"]
    with open(errlog, "w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 60
        port = int(_wait_for(errlog, r"Listening at: http://127\.0\.0\.1:(\d+)", proc, deadline).group(1))
        worker = int(_wait_for(errlog, r"Booting worker with pid: (\d+)", proc, deadline).group(1))
        # the worker imports the app after it logs its boot: the first
        # requests wait in the listen queue until it serves
        failures = _load(port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    log = errlog.read_text()
    assert failures == [], (failures[:5], log)
    assert rc == 0, log
    assert len(access.read_text().splitlines()) == REQUESTS

    # the worker's profile (written at its exit); the master's holds the
    # error log's lock only
    paths = [p for p in testing.list_profile_files(prefix)
             if os.path.basename(p).startswith("prof.%d." % worker)]
    assert paths, (testing.list_profile_files(prefix), log)
    rows = set()
    for path in paths:
        rows |= pprof_lock_rows(path)

    handler_rows = {r for r in rows if re.fullmatch(r"__init__\.py:\d+:lock", r[0])}
    assert handler_rows and all(module == "logging" for _, module, _ in handler_rows), rows
    if locals_readable():
        # one creation site (logging.Handler.createLock), two owner types:
        # two rows
        assert {owner for _, _, owner in handler_rows} == {"FileHandler", "StreamHandler"}, rows
        assert len({name for name, _, _ in handler_rows}) == 1, rows
    # else: the portable build of 3.11 cannot read `self` in Handler.handle,
    # so no owner tells the two handlers apart (README: limitations)

    line = testing.LineMarkers(str(tmp_path / "catalog_service.py")).create("cache")
    assert ("catalog_service.py:%d:catalog_cache_lock" % line, "catalog_service", None) in rows, rows
    assert not any(name.startswith("catalog_service.py:%d:" % line) and
                   name != "catalog_service.py:%d:catalog_cache_lock" % line
                   for name, _, _ in rows), rows

    pool_rows = {r for r in rows if r[1] == "sqlalchemy.util.queue"}
    assert any(re.fullmatch(r"queue\.py:\d+:mutex", name) for name, _, _ in pool_rows), rows
