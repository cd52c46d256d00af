"""`lock module` and `lock owner` (issue 24) in a package layout, read back
with go tool pprof: a handler base class and two subclasses in one module, a
decorator library in another module taking ``lock=``, and a pool module
named ``queue.py`` inside a package."""

import os
import re
import shutil
import subprocess
import textwrap

from conftest import locals_readable, run_script
from ddlock import testing

FILES = {
    "svc/__init__.py": "",
    "svc/handlers.py": """
        import threading

        class Handler:
            def __init__(self):
                self.lock = threading.RLock()  # !CREATE! handler

            def handle(self, n):
                with self.lock:
                    return n

        class FileHandler(Handler):
            pass

        class StreamHandler(Handler):
            pass
    """,
    "svc/cachelib.py": """
        import functools

        def cached(lock=None):
            def decorate(fn):
                @functools.wraps(fn)
                def wrapper(*args):
                    with lock:
                        return fn(*args)
                return wrapper
            return decorate
    """,
    "svc/pool/__init__.py": "",
    "svc/pool/queue.py": """
        import threading

        class Queue:
            def __init__(self):
                self.mutex = threading.Lock()  # !CREATE! pool

            def put(self, item):
                with self.mutex:
                    return item
    """,
    "svc/app.py": """
        import threading
        from svc.cachelib import cached
        from svc.handlers import FileHandler, StreamHandler
        from svc.pool.queue import Queue

        catalog_cache_lock = threading.Lock()  # !CREATE! cache

        @cached(lock=catalog_cache_lock)
        def catalog(n):
            return n

        def serve():
            access, errors, pool = FileHandler(), StreamHandler(), Queue()
            for i in range(3):
                access.handle(i)
                errors.handle(i)
                pool.put(i)
                catalog(i)
    """,
    "main.py": """
        import ddlock
        ddlock.start(output_pprof="@PREFIX@", capture_pct=100, upload_enabled=False)
        from svc import app
        app.serve()
        ddlock.stop()
    """,
}


def _line(path, key):
    return testing.LineMarkers(str(path)).create(key)


def test_package_layout_read_with_go_tool_pprof(tmp_path):
    prefix = str(tmp_path / "prof")
    for name, src in FILES.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(src).replace("@PREFIX@", prefix))
    run_script(str(tmp_path / "main.py"))
    path = testing.list_profile_files(prefix)[0]
    go = shutil.which("go")
    assert go, "golang-go is installed by `make deps`"
    raw = subprocess.run([go, "tool", "pprof", "-raw", path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert raw.returncode == 0, raw.stderr
    # -raw prints each sample as a line of values, then its labels as
    # `key:[value]` on the lines below
    samples = raw.stdout.split("Samples:")[1].split("Locations")[0]
    rows = set()
    for block in re.split(r"\n(?=\s+\d+(?:\s+\d+)+: )", samples):
        labels = dict(re.findall(r"(lock (?:name|module|owner)):\[([^\]]*)\]", block))
        if "lock name" in labels:
            rows.add((labels["lock name"], labels.get("lock module"), labels.get("lock owner")))
    handler = "handlers.py:%d:lock" % _line(tmp_path / "svc/handlers.py", "handler")
    pool = "queue.py:%d:mutex" % _line(tmp_path / "svc/pool/queue.py", "pool")
    cache = "app.py:%d:catalog_cache_lock" % _line(tmp_path / "svc/app.py", "cache")
    named = locals_readable()
    expected = {
        # one creation site, two owner types: two rows, both placed in the module
        (handler, "svc.handlers", "FileHandler" if named else None),
        (handler, "svc.handlers", "StreamHandler" if named else None),
        # the pool's queue.py is the package's, not the standard library's
        (pool, "svc.pool.queue", "Queue" if named else None),
        # `lock` is cachelib's closure variable: the name the lock was bound
        # to where it was made wins
        (cache, "svc.app", None),
    }
    assert rows == expected, (rows, raw.stdout[-3000:])
