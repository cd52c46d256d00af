"""pytest plugin for ddlock: the ``ddlock_profile`` fixture.

Registered through the ``pytest11`` entry point when ddlock is installed, or
explicitly with ``pytest_plugins = ["ddlock.pytest_plugin"]`` in a root
conftest.py.  Usage::

    def test_lock_name(ddlock_profile):
        with ddlock_profile.run():               # ddlock.start(...) / ddlock.stop()
            lock = threading.Lock()  # !CREATE! test_lock_name
            with lock:  # !ACQUIRE! test_lock_name
                pass
        ddlock_profile.assert_lock_events(
            expected_acquire_events=[
                LockAcquireEvent(caller_name="test_lock_name", filename=__file__,
                                 linenos=ddlock_profile.linenos("test_lock_name"), lock_name="lock"),
            ],
        )

ddlock itself is imported only when ``run()`` is entered, so loading this
plugin never loads the C extension.

Deadlocked tests (issue 18): with ``--ddlock-deadlock-timeout=SECONDS`` (or
the ``ddlock_deadlock_timeout`` ini option, or
``@pytest.mark.ddlock_deadlock_timeout(SECONDS)`` on a test), a test during
which ddlock runs and whose threads stay deadlocked for that long fails with
``ddlock.pytest_plugin.DeadlockError`` carrying ddlock's deadlock report (every
lock and every thread's stack) instead of hanging the suite. The main thread
is interrupted by a signal (SIGUSR2, handled only during the test); the
threads of the cycle other than the main thread stay blocked until the main
thread's unwinding releases what it held.
``--ddlock-lock-order`` runs ddlock for the whole session with lock-order
checking on (``ddlock.start(lock_order=True, capture_pct=0)``, no file, no
upload): every lock-order inversion the tests' locks take is listed at the
end. ``--ddlock-lock-order-fail=session`` (the default) then fails the
session; ``test`` fails the test during which the inversion was found;
``none`` only lists them. ddlock runs for the whole session, so tests cannot
start it themselves (the ``ddlock_profile`` fixture) in such a run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Generator, Iterator, List, Optional

import pytest

from . import testing


class DdlockProfile:
    """What the ``ddlock_profile`` fixture yields.

    ``run(**config)`` profiles the ``with`` body; afterwards ``profile`` is the
    merge of every file that run wrote, ``profiles`` the per-file profiles and
    ``paths`` their paths (oldest first).
    """

    def __init__(self, directory: str, test_file: Optional[str] = None) -> None:
        self.directory = directory
        self.test_file = test_file
        self.prefix: Optional[str] = None
        self.paths: List[str] = []
        self.profiles: List[testing.Profile] = []
        self._profile: Optional[testing.Profile] = None
        self._runs = 0
        self._running = False

    # -- running the profiler -------------------------------------------------

    def options(self, **config: object) -> dict:
        """The keyword arguments ``run(**config)`` passes to ``ddlock.start``."""
        options = {
            "output_pprof": os.path.join(self.directory, "ddlock-%d" % (self._runs + 1)),
            "capture_pct": 100,
            "upload_enabled": False,
        }
        options.update(config)
        return options

    @contextlib.contextmanager
    def run(self, **config: object) -> Iterator["DdlockProfile"]:
        """Profile the body: ``ddlock.start(output_pprof=<tmp prefix>,
        capture_pct=100, upload_enabled=False, **config)`` on entry,
        ``ddlock.stop()`` on exit, then parse what was written."""
        if self._running:
            raise RuntimeError("ddlock_profile.run() is already active")
        import ddlock  # lazily: the C extension is loaded only here

        options = self.options(**config)
        self._runs += 1
        self.prefix = os.fspath(options["output_pprof"])
        self.paths = []
        self.profiles = []
        self._profile = None
        ddlock.start(**options)
        self._running = True
        try:
            yield self
        except BaseException:
            self._running = False
            ddlock.stop()
            with contextlib.suppress(Exception):  # keep the body's exception
                self.collect()
            raise
        self._running = False
        ddlock.stop()
        self.collect()

    def flush(self) -> testing.Profile:
        """``ddlock.flush()`` during a run, then re-read the files so far."""
        import ddlock

        ddlock.flush()
        return self.collect()

    def collect(self) -> testing.Profile:
        """(Re)read the files of the current run; returns the merged profile."""
        if self.prefix is None:
            raise RuntimeError("ddlock_profile.run() has not been used yet")
        self.paths = testing.list_profile_files(self.prefix)
        self.profiles = [testing.parse_profile(p) for p in self.paths]
        self._profile = testing.merge_profiles(self.profiles)
        return self._profile

    # -- results --------------------------------------------------------------

    @property
    def profile(self) -> testing.Profile:
        """All files of the last run merged into one profile."""
        if self._profile is None:
            if self.prefix is None:
                raise RuntimeError("ddlock_profile.profile: use `with ddlock_profile.run(): ...` first")
            if self._running:
                raise RuntimeError("ddlock_profile.profile: the run is still active (use flush() to read it now)")
            self.collect()
        return self._profile  # type: ignore[return-value]

    def assert_lock_events(
        self,
        expected_acquire_events: Optional[list] = None,
        expected_release_events: Optional[list] = None,
    ) -> list:
        """:func:`ddlock.testing.assert_lock_events` on :attr:`profile`."""
        __tracebackhide__ = True
        return testing.assert_lock_events(
            self.profile,
            expected_acquire_events=expected_acquire_events,
            expected_release_events=expected_release_events,
        )

    def samples_with_value_type(self, value_type: str) -> List[testing.Sample]:
        return testing.get_samples_with_value_type(self.profile, value_type)

    def lock_names(self) -> List[str]:
        return testing.get_lock_names(self.profile)

    def linenos(self, key: str, filename: Optional[str] = None) -> testing.LineNo:
        """Line markers of ``key`` in ``filename`` (default: the test's file)."""
        filename = filename or self.test_file
        if filename is None:
            raise ValueError("no test file known; pass filename=")
        return testing.get_lock_linenos(key, filename)

    @property
    def markers(self) -> testing.LineMarkers:
        """The :class:`~ddlock.testing.LineMarkers` of the test's file."""
        if self.test_file is None:
            raise ValueError("no test file known")
        return testing.LineMarkers.for_file(self.test_file)

    def __repr__(self) -> str:
        return "<DdlockProfile prefix=%r files=%d>" % (self.prefix, len(self.paths))


def _test_file(request: "pytest.FixtureRequest") -> Optional[str]:
    path = getattr(request.node, "path", None)  # pytest >= 7
    if path is None:
        path = getattr(request.node, "fspath", None)
    return os.fspath(path) if path is not None else None


@pytest.fixture
def ddlock_profile(request: "pytest.FixtureRequest", tmp_path: "os.PathLike[str]") -> Iterator[DdlockProfile]:
    """Run ddlock around part of a test and read back the profile it wrote."""
    prof = DdlockProfile(os.fspath(tmp_path), _test_file(request))
    yield prof
    if prof._running:  # the run's generator was abandoned: still stop ddlock
        prof._running = False
        import ddlock

        ddlock.stop()


# ---- lock-order checking ------------------------------------------------------

FAIL_MODES = ("session", "test", "none")


def pytest_addoption(parser: "pytest.Parser") -> None:
    group = parser.getgroup("ddlock", "ddlock lock profiler")
    group.addoption("--ddlock-lock-order", action="store_true", default=False,
                    help="check lock order for the whole session (ddlock.start("
                         "lock_order=True)) and list lock-order inversions")
    group.addoption("--ddlock-lock-order-fail", choices=FAIL_MODES, default="session",
                    help="what an inversion fails: the session (default), the "
                         "test during which it was found, or none")
    group.addoption("--ddlock-deadlock-timeout", type=float, default=None, metavar="SECONDS",
                    help="fail a test whose threads stay deadlocked on locks ddlock profiles "
                         "for SECONDS, with ddlock's deadlock report (0: off, the default)")
    parser.addini("ddlock_deadlock_timeout", "default of --ddlock-deadlock-timeout", default="0")


def pytest_configure(config: "pytest.Config") -> None:
    config.addinivalue_line("markers", "ddlock_deadlock_timeout(seconds): fail this test when "
                                       "its threads stay deadlocked that long (ddlock)")
    if config.getoption("ddlock_lock_order", default=False):
        config.pluginmanager.register(
            LockOrderSession(config.getoption("ddlock_lock_order_fail")), "ddlock-lock-order")


class LockOrderSession:
    """The ``--ddlock-lock-order`` run: ddlock from session start to finish."""

    def __init__(self, fail: str) -> None:
        self.fail = fail
        self.started = False
        self.seen = 0
        self.found_in: List[str] = []  # node id when each report appeared
        self.reports: List[dict] = []

    def _new_inversions(self) -> List[dict]:
        import ddlock

        inversions = ddlock.lock_order_inversions()
        new = inversions[self.seen:]
        self.seen = len(inversions)
        return new

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: "pytest.Session") -> None:
        import ddlock

        ddlock.start(lock_order=True, capture_pct=0, upload_enabled=False)
        self.started = True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: "pytest.Item", call: "pytest.CallInfo[None]"):  # type: ignore[no-untyped-def]
        outcome = yield
        if not self.started:
            return
        new = self._new_inversions()
        if not new:
            return
        self.found_in += [item.nodeid] * len(new)
        rep = outcome.get_result()
        if self.fail == "test" and rep.passed:
            from . import _order

            rep.outcome = "failed"
            rep.longrepr = "ddlock: %d lock-order inversion(s) found during %s:\n%s" % (
                len(new), call.when, "\n".join(_order.format_report(r) for r in new))

    def pytest_sessionfinish(self, session: "pytest.Session", exitstatus: int) -> None:
        if not self.started:
            return
        import ddlock

        new = self._new_inversions()
        self.found_in += ["(session)"] * len(new)
        ddlock.stop(flush=False)
        self.started = False
        self.reports = ddlock.lock_order_inversions(same_class=True)
        inversions = [r for r in self.reports if r.get("kind") == "inversion"]
        if inversions and self.fail == "session" and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        from . import _order

        inversions = [r for r in self.reports if r.get("kind") == "inversion"]
        nestings = [r for r in self.reports if r.get("kind") == "same-class"]
        if not inversions and not nestings:
            terminalreporter.write_line("ddlock lock order: no inversion found")
            return
        terminalreporter.section("ddlock lock order")
        for i, report in enumerate(inversions):
            where = self.found_in[i] if i < len(self.found_in) else "?"
            terminalreporter.write_line("found during %s" % where)
            terminalreporter.write_line(_order.format_report(report))
        for report in nestings:
            terminalreporter.write_line(_order.format_report(report))
        terminalreporter.write_line("ddlock lock order: %d inversion(s), %d same-class nesting(s)"
                                    % (len(inversions), len(nestings)))


# ---- deadlocked tests fail instead of hanging -------------------------------

class DeadlockError(AssertionError):
    """A test's threads deadlocked on profiled locks (ddlock's report)."""


def _deadlock_timeout(item: Any) -> float:
    marker = item.get_closest_marker("ddlock_deadlock_timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = item.config.getoption("ddlock_deadlock_timeout")
    if value is None:
        try:
            value = float(item.config.getini("ddlock_deadlock_timeout") or 0)
        except ValueError:
            value = 0.0
    return float(value)


class _DeadlockGuard(object):
    """A thread looking for a cycle among the waits older than timeout
    (ddlock's registry) while a test runs; on one, the report goes to the
    main thread as a DeadlockError raised by a signal handler."""

    SIGNAL = getattr(signal, "SIGUSR2", None)

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.report: Optional[str] = None
        self.raised = False
        self.done = threading.Event()
        self.main = threading.main_thread().ident
        self.previous: Any = None
        self.thread = threading.Thread(target=self._watch, name="ddlock-deadlock-guard", daemon=True)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.report is not None and not self.raised:
            self.raised = True
            raise DeadlockError(self.report)

    def _watch(self) -> None:
        interval = min(max(self.timeout / 4.0, 0.05), 1.0)
        while not self.done.wait(interval):
            try:
                import ddlock
                from ddlock import _ddlock, _stuck

                if not ddlock.is_running():
                    continue
                cycles = _stuck.find_cycles(list(_ddlock._waits(self.timeout)))
            except Exception:
                continue
            if cycles:
                self.report = "\n\n".join(_stuck.format_deadlock(c) for c in cycles)
                signal.pthread_kill(self.main, self.SIGNAL)  # type: ignore[arg-type]
                return

    def __enter__(self) -> "_DeadlockGuard":
        self.previous = signal.signal(self.SIGNAL, self._handler)  # type: ignore[arg-type]
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join()
        signal.signal(self.SIGNAL, self.previous)  # type: ignore[arg-type]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: Any) -> Generator[None, None, None]:
    timeout = _deadlock_timeout(item)
    if (timeout <= 0 or _DeadlockGuard.SIGNAL is None or not hasattr(signal, "pthread_kill")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    with _DeadlockGuard(timeout):
        yield
