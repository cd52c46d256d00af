"""ddlock.testing -- helpers to test lock profiles, for ddlock's suite and yours.

Typical use::

    from ddlock import testing as pprof_utils

    def test_lock_events(tmp_path):
        prefix = str(tmp_path / "prof")
        ddlock.start(output_pprof=prefix, capture_pct=100, upload_enabled=False)
        lock = threading.Lock()  # !CREATE! test_lock_events
        lock.acquire()  # !ACQUIRE! test_lock_events
        lock.release()  # !RELEASE! test_lock_events
        ddlock.stop()

        profile = pprof_utils.parse_newest_profile(prefix)
        linenos = pprof_utils.get_lock_linenos("test_lock_events")
        pprof_utils.assert_lock_events(
            profile,
            expected_acquire_events=[
                pprof_utils.LockAcquireEvent(
                    caller_name="test_lock_events", filename="test_x.py",
                    linenos=linenos, lock_name="lock",
                ),
            ],
            expected_release_events=[
                pprof_utils.LockReleaseEvent(
                    caller_name="test_lock_events", filename="test_x.py",
                    linenos=linenos, lock_name="lock",
                ),
            ],
        )

Line markers are comments ``# !CREATE! key``, ``# !ACQUIRE! key`` and
``# !RELEASE! key`` (see :class:`LineMarkers`), so tests never hard-code
line numbers.

This module is pure Python: it never imports the ddlock C extension.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import threading
import tokenize
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, TypeVar, Union

from ._pprof import (
    DecodeError,
    Frame,
    Label,
    LimitError,
    Limits,
    Location,
    Profile,
    Sample,
    ValueType,
    aggregate,
    format_frame,
    format_profile,
    format_sample,
    merge,
    parse_bytes,
    parse_file,
)

__all__ = [
    "ANY",
    "DecodeError",
    "Frame",
    "Label",
    "LineMarkers",
    "LimitError",
    "Limits",
    "LineNo",
    "Location",
    "LockAcquireEvent",
    "LockEvent",
    "LockReleaseEvent",
    "MarkerError",
    "Profile",
    "Sample",
    "ValueType",
    "aggregate_samples",
    "assert_lock_events",
    "find_matching_samples",
    "format_profile",
    "format_sample",
    "get_label_values",
    "get_lock_linenos",
    "get_line_markers",
    "get_lock_names",
    "get_sample_value",
    "get_samples_with_label",
    "get_samples_with_label_key",
    "get_samples_with_lock_name",
    "get_samples_with_value_type",
    "list_profile_files",
    "merge_profiles",
    "parse_bytes",
    "parse_file",
    "parse_merged_profile",
    "parse_newest_profile",
    "parse_profile",
    "parse_profiles",
]

# Label keys and sample types written by ddlock (DESIGN.md, "pprof content").
LOCK_NAME = "lock name"
THREAD_ID = "thread id"
THREAD_NATIVE_ID = "thread native id"
THREAD_NAME = "thread name"
TASK_ID = "task id"
TASK_NAME = "task name"
LOCK_ACQUIRE = "lock-acquire"
LOCK_ACQUIRE_WAIT = "lock-acquire-wait"
LOCK_RELEASE = "lock-release"
LOCK_RELEASE_HOLD = "lock-release-hold"
LOCK_HOLDER_WAIT = "lock-holder-wait"
CONDITION_WAIT = "condition-wait"
CONDITION_WAIT_TIME = "condition-wait-time"


class _AnyType:
    """Wildcard: an event field set to ``ANY`` matches every value."""

    _instance = None

    def __new__(cls) -> "_AnyType":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY"

    def __reduce__(self) -> str:
        return "ANY"


ANY = _AnyType()

_T = TypeVar("_T")
# an expected event's field: a value, None (not checked) or ANY
MaybeAny = Union[_T, None, _AnyType]


# ---------------------------------------------------------------------------
# Finding and reading profile files
# ---------------------------------------------------------------------------

_PROFILE_NAME_RE = re.compile(r"\.(\d+)\.(\d+)\.pprof\Z")


def profiled_as(obj: Any) -> Optional[str]:
    """The ``lock type`` ddlock profiles ``obj`` as ("Lock", "RLock",
    "Condition", "asyncio.Lock", ...), or None when it is not profiled
    (made before start(), by an excluded module, or not a lock)."""
    from . import _ddlock

    kind: Optional[str] = _ddlock.profiled(obj)
    return kind


def unprofiled_lock(kind: str = "Lock") -> Any:
    """A native ``threading.Lock()`` / ``threading.RLock()`` that ddlock does
    not profile, even while it runs (made by ddlock itself, a module it
    never profiles): what differential tests compare profiled locks with."""
    if kind not in ("Lock", "RLock"):
        raise ValueError("kind must be 'Lock' or 'RLock'")
    return getattr(threading, kind)()


def list_profile_files(prefix: str, pid: Optional[int] = None) -> List[str]:
    """Paths of the files ``<prefix>.<pid>.<seq>.pprof``, oldest first.

    Files are ordered by (modification time, seq, pid).  With ``pid`` only
    that process's files are listed.
    """
    prefix = os.fspath(prefix)
    found = []
    for path in glob.glob(glob.escape(prefix) + ".*.*.pprof"):
        rest = path[len(prefix) :]
        m = _PROFILE_NAME_RE.match(rest)
        if m is None:
            continue
        file_pid, seq = int(m.group(1)), int(m.group(2))
        if pid is not None and file_pid != pid:
            continue
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:  # removed meanwhile
            continue
        found.append(((mtime, seq, file_pid), path))
    found.sort()
    return [path for _, path in found]


def _no_profile_error(prefix: str, pid: Optional[int]) -> FileNotFoundError:
    directory = os.path.dirname(os.path.abspath(prefix))
    base = os.path.basename(prefix)
    try:
        near = sorted(n for n in os.listdir(directory) if n.startswith(base))
    except OSError:
        near = None
    what = "%s.<pid>.<seq>.pprof" % prefix if pid is None else "%s.%d.<seq>.pprof" % (prefix, pid)
    if near is None:
        detail = "directory %s does not exist" % directory
    elif near:
        detail = "files starting with %r there: %s" % (base, ", ".join(near[:20]))
    else:
        detail = "no file in %s starts with %r" % (directory, base)
    return FileNotFoundError("no profile file matches %s (%s)" % (what, detail))


def parse_profile(path: str, strict: bool = True, limits: Any = None) -> Profile:
    """Parse one pprof file (gzip or raw protobuf).

    ``limits``: a :class:`Limits` or a dict of its fields (``{"max_samples":
    5_000_000}``); None = the defaults changed by ``DDLOCK_READ_MAX_*``.  A
    profile beyond them raises :class:`LimitError` (an empty file and a
    malformed one: :class:`DecodeError`).
    """
    return parse_file(os.fspath(path), strict=strict, limits=limits)


def parse_profiles(prefix: str, pid: Optional[int] = None, strict: bool = True, limits: Any = None) -> List[Profile]:
    """Parse every ``<prefix>.<pid>.<seq>.pprof`` file, oldest first.

    Returns an empty list when there is none.  Each profile's ``path`` tells
    which file it came from.  ``limits`` bounds each file (see parse_profile).
    """
    lim = Limits.resolve(limits)
    return [parse_file(p, strict=strict, limits=lim) for p in list_profile_files(prefix, pid)]


def parse_newest_profile(prefix: str, pid: Optional[int] = None, strict: bool = True, limits: Any = None) -> Profile:
    """Parse the newest ``<prefix>.<pid>.<seq>.pprof`` file, by (mtime, seq).

    Raises FileNotFoundError (saying what is there instead) when none exists.
    """
    paths = list_profile_files(prefix, pid)
    if not paths:
        raise _no_profile_error(os.fspath(prefix), pid)
    return parse_file(paths[-1], strict=strict, limits=limits)


def merge_profiles(*profiles: Union[Profile, Iterable[Profile]]) -> Profile:
    """Merge profiles into one (samples concatenated, ids renumbered).

    Accepts profiles as separate arguments and/or iterables of profiles:
    ``merge_profiles(p1, p2)`` or ``merge_profiles(parse_profiles(prefix))``.
    """
    flat: List[Profile] = []
    for p in profiles:
        if isinstance(p, Profile):
            flat.append(p)
        elif isinstance(p, (str, bytes, os.PathLike)):
            raise TypeError("merge_profiles takes Profile objects; use parse_merged_profile(prefix) for files")
        else:
            flat.extend(p)
    return merge(flat)


def parse_merged_profile(prefix: str, pid: Optional[int] = None, strict: bool = True, limits: Any = None) -> Profile:
    """All ``<prefix>.<pid>.<seq>.pprof`` files merged into one profile.

    An empty profile (no samples) when there is no file.
    """
    return merge(parse_profiles(prefix, pid, strict, limits))


def aggregate_samples(profile: Profile) -> Profile:
    """Sum samples with identical stacks and labels (e.g. after a merge)."""
    return aggregate(profile)


# ---------------------------------------------------------------------------
# Selecting samples
# ---------------------------------------------------------------------------


def get_samples_with_value_type(profile: Profile, value_type: str) -> List[Sample]:
    """Samples whose value for ``value_type`` (e.g. "lock-acquire") is non-zero.

    Raises ValueError if the profile has no such sample type.
    """
    return profile.samples_with_value(value_type)


def get_sample_value(profile: Profile, sample: Sample, value_type: str) -> int:
    """The value of ``sample`` for the sample type ``value_type``."""
    return profile.sample_value(sample, value_type)


def get_samples_with_label_key(profile: Profile, key: str) -> List[Sample]:
    """Samples that carry label ``key``."""
    return [s for s in profile.samples if key in s.labels]


def get_samples_with_label(profile: Profile, key: str, value: Union[str, int]) -> List[Sample]:
    """Samples whose label ``key`` equals ``value``."""
    return [s for s in profile.samples if key in s.labels and s.labels[key] == value]


def get_samples_with_lock_name(profile: Profile, lock_name: str) -> List[Sample]:
    """Samples whose full ``lock name`` label equals ``lock_name``
    (e.g. ``"test_x.py:12:lock"``)."""
    return get_samples_with_label(profile, LOCK_NAME, lock_name)


def get_label_values(profile: Profile, key: str) -> List[Union[str, int]]:
    """Distinct values of label ``key``, in first-seen order."""
    return profile.label_values(key)


def get_lock_names(profile: Profile) -> List[str]:
    """Distinct ``lock name`` labels of the profile, in first-seen order."""
    return [v for v in profile.label_values(LOCK_NAME) if isinstance(v, str)]


# ---------------------------------------------------------------------------
# Expected events
# ---------------------------------------------------------------------------


class LineNo(NamedTuple):
    """Line numbers of a lock's creation, acquire and release."""

    create: Optional[int] = None
    acquire: Optional[int] = None
    release: Optional[int] = None


def _last_component(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


class LockEvent:
    """An expected lock event; use :class:`LockAcquireEvent` or
    :class:`LockReleaseEvent`.

    Fields (any of them may be :data:`ANY` to match every value):

    * ``caller_name`` -- function name of the leaf frame; a qualified name
      (``"TestX.test_y"``) matches the bare name (``"test_y"``) and vice versa,
      since Python < 3.11 reports bare names.  None: not checked.
    * ``filename`` -- basename of the file that created the lock (a path is
      reduced to its basename); the first part of the ``lock name`` label.
    * ``linenos`` -- a :class:`LineNo`; or pass ``create_line``,
      ``acquire_line``, ``release_line`` (these override ``linenos``).  The
      create line is part of the ``lock name`` label; the acquire (resp.
      release) line must be the leaf frame's line.  None: not checked.
    * ``lock_name`` -- the variable/attribute name (``"lock"``,
      ``"_Foo__lock"``), or None for an anonymous lock, whose label is
      ``"<file>:<line>"``.
    * ``caller_filename`` -- basename of the leaf frame's file; defaults to
      ``filename`` (the lock is normally used where it is created).  Pass
      ``ANY`` when the lock is acquired from another file.
    * ``thread_id``, ``thread_native_id``, ``thread_name``, ``task_id``,
      ``task_name`` -- label values to match; None: not checked.
    * ``count`` -- if given, the sum of the event's count value
      (``lock-acquire`` or ``lock-release``) over all matching samples.
    """

    kind = ""  # "acquire" / "release"
    value_type = ""  # count sample type
    time_type = ""  # nanoseconds sample type

    def __init__(
        self,
        caller_name: MaybeAny[str] = None,
        filename: MaybeAny[str] = None,
        linenos: Optional[LineNo] = None,
        lock_name: MaybeAny[str] = None,
        *,
        create_line: Optional[int] = None,
        acquire_line: Optional[int] = None,
        release_line: Optional[int] = None,
        caller_filename: MaybeAny[str] = None,
        thread_id: MaybeAny[int] = None,
        thread_native_id: MaybeAny[int] = None,
        thread_name: MaybeAny[str] = None,
        task_id: MaybeAny[int] = None,
        task_name: MaybeAny[str] = None,
        count: Optional[int] = None,
    ) -> None:
        if type(self) is LockEvent:
            raise TypeError("use LockAcquireEvent or LockReleaseEvent")
        if linenos is None:
            linenos = LineNo()
        elif not isinstance(linenos, LineNo):
            if isinstance(linenos, tuple) and len(linenos) == 3:
                linenos = LineNo(*linenos)
            else:
                raise TypeError("linenos must be a LineNo(create=, acquire=, release=), got %r" % (linenos,))
        linenos = LineNo(
            create=linenos.create if create_line is None else create_line,
            acquire=linenos.acquire if acquire_line is None else acquire_line,
            release=linenos.release if release_line is None else release_line,
        )
        if isinstance(filename, (str, os.PathLike)):
            filename = os.path.basename(os.fspath(filename))
        if caller_filename is None:
            caller_filename = filename
        elif isinstance(caller_filename, (str, os.PathLike)):
            caller_filename = os.path.basename(os.fspath(caller_filename))
        self.caller_name = caller_name
        self.filename = filename
        self.linenos = linenos
        self.lock_name = lock_name
        self.caller_filename = caller_filename
        self.thread_id = thread_id
        self.thread_native_id = thread_native_id
        self.thread_name = thread_name
        self.task_id = task_id
        self.task_name = task_name
        self.count = count

    # -- derived ------------------------------------------------------------

    @property
    def create_line(self) -> Optional[int]:
        return self.linenos.create

    @property
    def acquire_line(self) -> Optional[int]:
        return self.linenos.acquire

    @property
    def release_line(self) -> Optional[int]:
        return self.linenos.release

    @property
    def line(self) -> Optional[int]:
        """The line expected on the leaf frame (acquire or release line)."""
        return self.linenos.acquire if self.kind == "acquire" else self.linenos.release

    @property
    def expected_lock_label(self) -> Optional[str]:
        """The exact ``lock name`` label expected, or None when a wildcard
        (ANY/None filename or create line, ANY lock_name) leaves it open."""
        if not isinstance(self.filename, str) or not isinstance(self.linenos.create, int):
            return None
        if self.lock_name is ANY:
            return None
        if self.lock_name is None:
            return "%s:%d" % (self.filename, self.linenos.create)
        return "%s:%d:%s" % (self.filename, self.linenos.create, self.lock_name)

    def _label_pattern(self) -> str:
        file_part = self.filename if isinstance(self.filename, str) else "*"
        line_part = str(self.linenos.create) if isinstance(self.linenos.create, int) else "*"
        if self.lock_name is ANY:
            return "%s:%s[:*]" % (file_part, line_part)
        if self.lock_name is None:
            return "%s:%s" % (file_part, line_part)
        return "%s:%s:%s" % (file_part, line_part, self.lock_name)

    def describe(self) -> str:
        parts = ["lock name %r" % self._label_pattern()]
        if self.caller_name is not None:
            parts.append("caller %r" % (self.caller_name,))
        if self.line is not None:
            parts.append("%s line %s" % (self.kind, self.line))
        if self.caller_filename is not None and self.caller_filename is not ANY:
            parts.append("in file %r" % (self.caller_filename,))
        for attr, label in _THREAD_FIELDS:
            v = getattr(self, attr)
            if v is not None:
                parts.append("%s %r" % (label, v))
        if self.count is not None:
            parts.append("%s total %d" % (self.value_type, self.count))
        return "%s(%s)" % (type(self).__name__, ", ".join(parts))

    def __repr__(self) -> str:
        fields = [
            "caller_name=%r" % (self.caller_name,),
            "filename=%r" % (self.filename,),
            "linenos=%r" % (self.linenos,),
            "lock_name=%r" % (self.lock_name,),
        ]
        if self.caller_filename != self.filename:
            fields.append("caller_filename=%r" % (self.caller_filename,))
        for attr in ("thread_id", "thread_native_id", "thread_name", "task_id", "task_name", "count"):
            v = getattr(self, attr)
            if v is not None:
                fields.append("%s=%r" % (attr, v))
        return "%s(%s)" % (type(self).__name__, ", ".join(fields))

    def _key(self) -> tuple:
        return (
            type(self),
            self.caller_name,
            self.filename,
            self.linenos,
            self.lock_name,
            self.caller_filename,
            self.thread_id,
            self.thread_native_id,
            self.thread_name,
            self.task_id,
            self.task_name,
            self.count,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LockEvent):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # -- matching -------------------------------------------------------------

    def _label_mismatch(self, actual: object) -> Optional[str]:
        expected = self.expected_lock_label
        if expected is not None:
            if actual != expected:
                return "lock name %r != expected %r" % (actual, expected)
            return None
        if not isinstance(actual, str):
            return "lock name %r is not a string (expected %r)" % (actual, self._label_pattern())
        m = re.match(r"\A(.+?):(\d+)(?::(.*))?\Z", actual, re.S)
        if m is None:
            return "lock name %r is not '<file>:<line>[:<name>]'" % (actual,)
        file_part, line_part, name_part = m.group(1), int(m.group(2)), m.group(3)
        if isinstance(self.filename, str) and file_part != self.filename:
            return "lock name %r: file %r != expected %r" % (actual, file_part, self.filename)
        if isinstance(self.linenos.create, int) and line_part != self.linenos.create:
            return "lock name %r: create line %d != expected %d" % (actual, line_part, self.linenos.create)
        if self.lock_name is ANY:
            return None
        if self.lock_name is None and name_part is not None:
            return "lock name %r has a name; expected an anonymous lock" % (actual,)
        if self.lock_name is not None and name_part != self.lock_name:
            return "lock name %r: variable %r != expected %r" % (actual, name_part, self.lock_name)
        return None

    def mismatches(self, profile: Profile, sample: Sample) -> List[str]:
        """Why ``sample`` does not match this event ([] when it matches)."""
        out: List[str] = []
        if LOCK_NAME not in sample.labels:
            out.append("no %r label" % LOCK_NAME)
        else:
            why = self._label_mismatch(sample.labels[LOCK_NAME])
            if why:
                out.append(why)
        leaf = sample.leaf
        if leaf is None:
            if self.caller_name is not None or self.line is not None:
                out.append("empty stack")
        else:
            if self.caller_name is not None and not isinstance(self.caller_name, _AnyType):  # i.e. ANY
                if leaf.function_name != self.caller_name and _last_component(leaf.function_name) != _last_component(
                    self.caller_name
                ):
                    out.append("leaf function %r != expected %r" % (leaf.function_name, self.caller_name))
            if self.line is not None and leaf.line != self.line:
                out.append("leaf line %d != expected %s line %d" % (leaf.line, self.kind, self.line))
            if self.caller_filename is not None and self.caller_filename is not ANY:
                base = os.path.basename(leaf.filename)
                if base != self.caller_filename:
                    out.append("leaf file %r != expected %r" % (leaf.filename, self.caller_filename))
        try:
            count = profile.sample_value(sample, self.value_type)
        except ValueError as e:  # no such sample type
            out.append(str(e))
        else:
            values = profile.values_by_type(sample)
            if count <= 0:
                out.append("%s value is %d (expected > 0)" % (self.value_type, count))
            negative = ["%s=%d" % (k, v) for k, v in values.items() if v < 0]
            if negative:
                out.append("negative value(s): %s" % ", ".join(negative))
        for attr, label in _THREAD_FIELDS:
            expected = getattr(self, attr)
            if expected is None or expected is ANY:
                continue
            if label not in sample.labels:
                out.append("no %r label (expected %r)" % (label, expected))
                continue
            actual = sample.labels[label]
            if isinstance(expected, int) and isinstance(actual, int):
                # tolerate an unsigned id stored as int64
                same = (actual - expected) % (1 << 64) == 0
            else:
                same = actual == expected
            if not same:
                out.append("%s %r != expected %r" % (label, actual, expected))
        return out

    def matches(self, profile: Profile, sample: Sample) -> bool:
        return not self.mismatches(profile, sample)


_THREAD_FIELDS = (
    ("thread_id", THREAD_ID),
    ("thread_native_id", THREAD_NATIVE_ID),
    ("thread_name", THREAD_NAME),
    ("task_id", TASK_ID),
    ("task_name", TASK_NAME),
)


class LockAcquireEvent(LockEvent):
    """An expected ``lock-acquire`` sample (leaf frame at the acquire line)."""

    kind = "acquire"
    value_type = LOCK_ACQUIRE
    time_type = LOCK_ACQUIRE_WAIT


class LockReleaseEvent(LockEvent):
    """An expected ``lock-release`` sample (leaf frame at the release line)."""

    kind = "release"
    value_type = LOCK_RELEASE
    time_type = LOCK_RELEASE_HOLD


def find_matching_samples(profile: Profile, event: LockEvent) -> List[Sample]:
    """The samples of ``profile`` that match ``event``."""
    return [s for s in profile.samples if event.matches(profile, s)]


def _as_profile(profile: Union[Profile, Iterable[Profile]]) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, (str, bytes, os.PathLike)):
        raise TypeError("assert_lock_events takes a Profile; parse the file first (parse_newest_profile(prefix))")
    return merge(profile)


_MAX_SHOWN = 12


def _explain(profile: Profile, event: LockEvent, matched: List[Sample]) -> str:
    lines = ["expected %s" % event.describe()]
    if event.count is not None and matched:
        total = sum(profile.sample_value(s, event.value_type) for s in matched)
        lines.append(
            "  %d sample(s) match, but their %s values sum to %d, expected %d:"
            % (len(matched), event.value_type, total, event.count)
        )
        for s in matched[:_MAX_SHOWN]:
            lines.append(format_sample(profile, s, indent="    "))
        return "\n".join(lines)

    scored = [(i, event.mismatches(profile, s), s) for i, s in enumerate(profile.samples)]
    same_label = [t for t in scored if not any(m.startswith(("lock name", "no 'lock name'")) for m in t[1])]
    if same_label:
        lines.append("  %d sample(s) with that lock name, none matching:" % len(same_label))
        shown = same_label
    else:
        lines.append("  no sample has that lock name")
        names = get_lock_names(profile)
        if names:
            lines.append("  lock names in the profile: %s" % ", ".join(repr(n) for n in names[:50]))
        relevant = []
        for t in scored:
            try:
                if profile.sample_value(t[2], event.value_type) > 0:
                    relevant.append(t)
            except ValueError:
                break
        if relevant:
            lines.append("  closest %s samples:" % event.value_type)
        else:
            lines.append("  the profile has no %s sample at all" % event.value_type)
        shown = relevant
    shown = sorted(shown, key=lambda t: (len(t[1]), t[0]))
    for i, why, s in shown[:_MAX_SHOWN]:
        lines.append("    sample #%d: %s" % (i, "; ".join(why) if why else "matches"))
        lines.append(format_sample(profile, s, indent="      "))
    if len(shown) > _MAX_SHOWN:
        lines.append("    ... %d more" % (len(shown) - _MAX_SHOWN))
    return "\n".join(lines)


def assert_lock_events(
    profile: Union[Profile, Iterable[Profile]],
    expected_acquire_events: Optional[Sequence[LockEvent]] = None,
    expected_release_events: Optional[Sequence[LockEvent]] = None,
) -> List[List[Sample]]:
    """Assert that each expected event has a matching sample in ``profile``.

    An acquire event needs a sample with the expected ``lock name`` label,
    the expected leaf function, file and acquire line, ``lock-acquire`` > 0
    (and no negative value), and matching thread/task labels when given;
    likewise a release event with the release line and ``lock-release`` > 0.
    ``profile`` may also be a list of profiles (they are merged).

    On failure the AssertionError lists, for every event not found, the
    samples that came closest and why each one does not match.  Returns the
    matching samples, one list per expected event (acquire events first).
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this one
    profile = _as_profile(profile)
    checks: List[LockEvent] = []
    for events, cls in ((expected_acquire_events, LockAcquireEvent), (expected_release_events, LockReleaseEvent)):
        if events is None:
            continue
        if isinstance(events, LockEvent):
            events = [events]
        for ev in events:
            if not isinstance(ev, cls):
                raise TypeError(
                    "expected_%s_events must hold %s objects, got %r"
                    % (cls.kind, cls.__name__, ev)
                )
            checks.append(ev)
    results: List[List[Sample]] = []
    failures: List[str] = []
    for ev in checks:
        matched = find_matching_samples(profile, ev)
        results.append(matched)
        ok = bool(matched)
        if ok and ev.count is not None:
            ok = sum(profile.sample_value(s, ev.value_type) for s in matched) == ev.count
        if not ok:
            failures.append(_explain(profile, ev, matched))
    if failures:
        source = profile.path
        if isinstance(source, list):
            source = ", ".join(source) if source else None
        header = "%d of %d expected lock event(s) not found in profile%s (%d samples; sample types: %s)" % (
            len(failures),
            len(checks),
            " " + source if source else "",
            len(profile.samples),
            ", ".join("%s/%s" % vt for vt in profile.sample_types) or "none",
        )
        raise AssertionError(header + "\n" + "\n".join(failures))
    return results


# ---------------------------------------------------------------------------
# Line markers
# ---------------------------------------------------------------------------


class MarkerError(LookupError):
    """A line marker is missing or ambiguous."""

    def __str__(self) -> str:  # LookupError would repr() a single argument
        return str(self.args[0]) if self.args else ""


_TOKEN_RE = re.compile(r"!([A-Z][A-Z0-9_]*)(?:\[(<=|>=|==|!=|<|>)\s*(\d+(?:\.\d+)*)\])?!|([^\s!]+)")


def _version_ok(op: Optional[str], version: Optional[str]) -> bool:
    if op is None:
        return True
    want = tuple(int(x) for x in version.split("."))  # type: ignore[union-attr]
    have = tuple(sys.version_info[: len(want)])
    return {
        "<": have < want,
        "<=": have <= want,
        ">": have > want,
        ">=": have >= want,
        "==": have == want,
        "!=": have != want,
    }[op]


def _parse_comment(text: str) -> List[Tuple[str, str, bool]]:
    """``[(tag, key, applies_to_this_python)]`` for the markers in a comment.

    Tags accumulate until a key: ``# !ACQUIRE! !RELEASE! k`` marks both.
    """
    if "!" not in text:
        return []
    out: List[Tuple[str, str, bool]] = []
    pending: List[Tuple[str, bool]] = []
    for m in _TOKEN_RE.finditer(text):
        tag, op, version, word = m.groups()
        if tag is not None:
            pending.append((tag, _version_ok(op, version)))
        elif pending:
            out.extend((t, word, ok) for t, ok in pending)
            pending = []
    return out


def _scan_comments(filename: str) -> List[Tuple[int, str]]:
    """``[(line number, comment text)]`` of a Python source file."""
    try:
        with tokenize.open(filename) as f:
            return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(f.readline) if tok.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        pass
    # Not valid Python: fall back to everything after a '#' on each line.
    out = []
    with open(filename, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            i = line.find("#")
            if i >= 0:
                out.append((n, line[i:]))
    return out


_CACHE: Dict[str, Tuple[Tuple[int, int], "LineMarkers"]] = {}


def _caller_filename(depth: int) -> str:
    frame = sys._getframe(depth + 1)
    return frame.f_code.co_filename


class LineMarkers:
    """Line numbers of ``# !TAG! key`` comments in a source file.

    The usual tags are ``CREATE``, ``ACQUIRE`` and ``RELEASE``; any
    upper-case tag works (``lines("WAIT", key)``).  Several tags may share a
    line and a key: ``with lock:  # !ACQUIRE! !RELEASE! key``.  A tag may be
    limited to some Python versions with a ``[<op> <version>]`` suffix; it is
    ignored elsewhere::

        with lock:  # !ACQUIRE! !RELEASE[>=3.10]! test_with
            work()  # !RELEASE[<3.10]! test_with

    Only real comments count (markers inside strings are ignored).  A key may
    have several lines per tag; :meth:`lines` returns them all, :meth:`line`
    (and :meth:`create`/:meth:`acquire`/:meth:`release`) insists on exactly one.
    With no filename, the calling code's file is scanned.
    """

    def __init__(self, filename: Optional[str] = None, *, _depth: int = 0) -> None:
        if filename is None:
            filename = _caller_filename(1 + _depth)
        self.filename = os.fspath(filename)
        # tag -> key -> [line numbers] (markers applying to this Python only)
        self._marks: Dict[str, Dict[str, List[int]]] = {}
        self._all: Dict[str, Dict[str, List[int]]] = {}
        for lineno, comment in _scan_comments(self.filename):
            for tag, key, ok in _parse_comment(comment):
                self._all.setdefault(tag, {}).setdefault(key, []).append(lineno)
                if ok:
                    self._marks.setdefault(tag, {}).setdefault(key, []).append(lineno)

    @classmethod
    def for_file(cls, filename: str) -> "LineMarkers":
        """A cached instance for ``filename`` (rescanned when the file changes)."""
        filename = os.path.abspath(os.fspath(filename))
        st = os.stat(filename)
        stamp = (st.st_mtime_ns, st.st_size)
        hit = _CACHE.get(filename)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        markers = cls(filename)
        _CACHE[filename] = (stamp, markers)
        return markers

    def keys(self) -> List[str]:
        """Every key that has at least one marker (for any Python version)."""
        seen: Dict[str, None] = {}
        for by_key in self._all.values():
            for key in by_key:
                seen.setdefault(key, None)
        return sorted(seen)

    def __contains__(self, key: object) -> bool:
        return any(key in by_key for by_key in self._all.values())

    def lines(self, tag: str, key: str) -> List[int]:
        """All line numbers marked ``!tag! key`` (possibly empty), ascending."""
        self._check_key(key)
        return list(self._marks.get(tag.upper(), {}).get(key, []))

    def line(self, tag: str, key: str) -> int:
        """The single line marked ``!tag! key``; MarkerError if none or several."""
        found = self.lines(tag, key)
        if len(found) != 1:
            tag = tag.upper()
            if not found:
                have = sorted(t for t, by_key in self._marks.items() if key in by_key)
                raise MarkerError(
                    "no '# !%s! %s' marker in %s (tags for %r: %s)"
                    % (tag, key, self.filename, key, ", ".join(have) or "none")
                )
            raise MarkerError(
                "%d '# !%s! %s' markers in %s (lines %s); use lines(%r, %r) to get them all"
                % (len(found), tag, key, self.filename, ", ".join(map(str, found)), tag, key)
            )
        return found[0]

    def _check_key(self, key: str) -> None:
        if key not in self:
            raise MarkerError(
                "no marker for key %r in %s (keys: %s)" % (key, self.filename, ", ".join(self.keys()) or "none")
            )

    def create(self, key: str) -> int:
        return self.line("CREATE", key)

    def acquire(self, key: str) -> int:
        return self.line("ACQUIRE", key)

    def release(self, key: str) -> int:
        return self.line("RELEASE", key)

    def creates(self, key: str) -> List[int]:
        return self.lines("CREATE", key)

    def acquires(self, key: str) -> List[int]:
        return self.lines("ACQUIRE", key)

    def releases(self, key: str) -> List[int]:
        return self.lines("RELEASE", key)

    def linenos(self, key: str) -> LineNo:
        """``LineNo(create, acquire, release)`` of ``key``; a field is None when
        that tag is absent; MarkerError if a tag has several lines."""
        self._check_key(key)
        values = []
        for tag in ("CREATE", "ACQUIRE", "RELEASE"):
            found = self.lines(tag, key)
            if len(found) > 1:
                raise MarkerError(
                    "key %r has %d '!%s!' markers in %s (lines %s); use LineMarkers(...).lines(%r, %r)"
                    % (key, len(found), tag, self.filename, ", ".join(map(str, found)), tag, key)
                )
            values.append(found[0] if found else None)
        return LineNo(*values)

    def __repr__(self) -> str:
        return "LineMarkers(%r, keys=%r)" % (self.filename, self.keys())


def get_lock_linenos(key: str, filename: Optional[str] = None) -> LineNo:
    """``LineNo(create, acquire, release)`` from the ``# !CREATE! key``,
    ``# !ACQUIRE! key`` and ``# !RELEASE! key`` markers of ``filename``
    (default: the calling code's file)."""
    if filename is None:
        filename = _caller_filename(1)
    return LineMarkers.for_file(filename).linenos(key)


def get_line_markers(filename: Optional[str] = None) -> LineMarkers:
    """The (cached) :class:`LineMarkers` of ``filename`` (default: caller's file)."""
    if filename is None:
        filename = _caller_filename(1)
    return LineMarkers.for_file(filename)
