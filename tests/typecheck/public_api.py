"""What a user's type checker sees of ddlock's public API (never run, only
type-checked).

`make lint` checks this file with mypy --strict against the source tree and
scripts/test_installed.sh against the installed package (which must carry
py.typed). Each `# type: ignore[code]` line is a misuse the annotations must
catch: with warn_unused_ignores, an ignore that is not needed -- the
annotation went missing or became too loose -- fails the check.
"""

import threading
from typing import Dict, List, Union

import ddlock
from ddlock import testing
from ddlock.pytest_plugin import DdlockProfile


def profile_app(prefix: str) -> List[str]:
    ddlock.start(output_pprof=prefix, capture_pct=10, upload_enabled=False,
                 lock_exclude_modules=["threading", "mylib"], max_frames=32)
    running: bool = ddlock.is_running()
    assert running
    with threading.Lock():
        pass
    paths: List[str] = ddlock.flush()
    counters: Dict[str, Union[int, str]] = ddlock.stats()
    assert counters
    ddlock.stop(flush=False)
    return paths


def misuse() -> None:
    ddlock.start(capture_pct="10%")  # type: ignore[arg-type]
    ddlock.start(output_prefix="/tmp/x")  # type: ignore[call-arg]
    ddlock.start("/tmp/x")  # type: ignore[call-arg]
    ddlock.stop(flush="no")  # type: ignore[arg-type]
    n: int = ddlock.flush()  # type: ignore[assignment]
    s: str = ddlock.is_running()  # type: ignore[assignment]
    print(n, s)


def check_profile(prefix: str) -> int:
    profile: testing.Profile = testing.parse_newest_profile(prefix)
    names: List[str] = testing.get_lock_names(profile)
    linenos: testing.LineNo = testing.LineNo(create=1, acquire=2, release=3)
    testing.assert_lock_events(
        profile,
        expected_acquire_events=[testing.LockAcquireEvent(
            caller_name="main", filename="app.py", linenos=linenos, lock_name="lock")],
        expected_release_events=[testing.LockReleaseEvent(
            caller_name="main", filename="app.py", linenos=linenos, lock_name=testing.ANY)],
    )
    samples: List[testing.Sample] = testing.get_samples_with_lock_name(profile, names[0])
    total = sum(testing.get_sample_value(profile, s, "lock-acquire") for s in samples)
    files: List[str] = testing.list_profile_files(prefix)
    merged: testing.Profile = testing.parse_merged_profile(prefix)
    assert files and merged
    testing.parse_newest_profile(42)  # type: ignore[arg-type]
    testing.LockAcquireEvent(linenos=7)  # type: ignore[arg-type]
    return total


def with_fixture(ddlock_profile: DdlockProfile) -> List[str]:
    with ddlock_profile.run(capture_pct=100):
        pass
    return ddlock_profile.lock_names()
