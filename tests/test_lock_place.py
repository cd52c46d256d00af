"""`lock module` and `lock owner` (issue 24) in a package layout, read back
with go tool pprof: a handler base class and two subclasses in one module, a
decorator library in another module taking ``lock=``, and a pool module
named ``queue.py`` inside a package."""

import os
import textwrap

from conftest import locals_readable, pprof_lock_rows, run_script
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
    "svc/cachelib2.py": """
        class cached:
            # as cachetools 6+: the lock kept on a wrapper object, taken
            # into a local of __call__
            def __init__(self, lock):
                self.cache_lock = lock

            def __call__(self, fn):
                def wrapper(*args):
                    return self.call(fn, args)
                return wrapper

            def call(self, fn, args):
                lock = self.cache_lock
                with lock:
                    return fn(*args)
    """,
    "svc/locks.py": """
        import threading

        def make_lock():
            lock = threading.Lock()  # !CREATE! factory
            return lock
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
        from svc import cachelib2
        from svc.cachelib import cached
        from svc.locks import make_lock
        from svc.handlers import FileHandler, StreamHandler
        from svc.pool.queue import Queue

        catalog_cache_lock = threading.Lock()  # !CREATE! cache
        price_cache_lock = threading.Lock()  # !CREATE! price

        @cached(lock=catalog_cache_lock)
        def catalog(n):
            return n

        @cachelib2.cached(price_cache_lock)
        def price(n):
            return n

        def serve():
            access, errors, pool = FileHandler(), StreamHandler(), Queue()
            request_lock = make_lock()
            for i in range(3):
                access.handle(i)
                errors.handle(i)
                pool.put(i)
                catalog(i)
                price(i)
                with request_lock:
                    pass
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
    rows = pprof_lock_rows(path)
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
        # `lock = self.cache_lock` is a local of a library in another file:
        # the global the lock was bound to where it was made wins
        ("app.py:%d:price_cache_lock" % _line(tmp_path / "svc/app.py", "price"), "svc.app", None),
        # ... but not a factory's local: the caller's variable names it
        ("locks.py:%d:request_lock" % _line(tmp_path / "svc/locks.py", "factory"), "svc.locks", None)
        if named else
        ("locks.py:%d:lock" % _line(tmp_path / "svc/locks.py", "factory"), "svc.locks", None),
    }
    assert rows == expected, rows
