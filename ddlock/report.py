"""Read ddlock pprof files: terminal report, flame graph, lock-name checks.

Used by ``python -m ddlock report FILES...`` and ``python -m ddlock check
FILES...`` (see :mod:`ddlock.__main__`) and by the production stress test,
which shares :func:`check_lock_names` so that the seed's success criteria
have a single implementation.

FILES are pprof files or output prefixes (``DD_PROFILING_OUTPUT_PPROF``
values, expanded to ``<prefix>.<pid>.<seq>.pprof``) or directories (every
``*.pprof`` inside).

Only the pure-Python pprof reader is used: this module never loads the C
extension, so it reads profiles written anywhere.
"""

from __future__ import annotations

import colorsys
import glob
import hashlib
import os
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

from . import _pprof
from .testing import list_profile_files

__all__ = [
    "Criterion",
    "LockName",
    "LockStats",
    "check_lock_names",
    "collect_lock_stats",
    "describe_lock",
    "lock_key",
    "split_lock_key",
    "compare_name_sets",
    "expand_paths",
    "format_criteria",
    "format_ns",
    "wrap",
    "load_profile",
    "lock_names",
    "parse_lock_name",
    "render_flamegraph",
    "render_flamegraph_file",
    "render_report",
    "render_condition_waits",
    "render_lock_table",
    "render_stacks",
    "variable_names",
]

WIDTH = 100  # every line of the terminal report fits this many columns

LOCK_NAME = "lock name"
LOCK_MODULE, LOCK_OWNER = "lock module", "lock owner"
_SEP = "\x1f"
ACQUIRE, WAIT, RELEASE, HOLD = "lock-acquire", "lock-acquire-wait", "lock-release", "lock-release-hold"
HOLDER_WAIT = "lock-holder-wait"  # a wait charged to the holder's stack (issue 18)
CONDITION_WAIT, CONDITION_WAIT_TIME = "condition-wait", "condition-wait-time"
VALUE_TYPES = {"wait": WAIT, "hold": HOLD, "holder": HOLDER_WAIT,
               CONDITION_WAIT_TIME: CONDITION_WAIT_TIME}


# ---------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------


def expand_paths(args: Iterable[str]) -> List[str]:
    """Profile files named by ``args`` (files, prefixes or directories).

    Raises FileNotFoundError naming every argument that matched nothing.
    """
    out: List[str] = []
    missing: List[str] = []
    for arg in args:
        arg = os.fspath(arg)
        if os.path.isfile(arg):
            found = [arg]
        elif os.path.isdir(arg):
            found = sorted(glob.glob(os.path.join(glob.escape(arg), "*.pprof")))
        else:
            found = list_profile_files(arg)
            if not found:  # a shell-style pattern the shell did not expand
                found = sorted(p for p in glob.glob(arg) if os.path.isfile(p))
        if not found:
            missing.append(arg)
        for path in found:
            if path not in out:
                out.append(path)
    if missing:
        raise FileNotFoundError(
            "no profile found for %s (expected a pprof file, a directory of *.pprof, "
            "or an output prefix P with files P.<pid>.<seq>.pprof)" % ", ".join(repr(m) for m in missing)
        )
    return out


def load_profile(paths: Sequence[str], limits=None) -> _pprof.Profile:
    """Parse and merge ``paths`` into one profile (DecodeError names the file).

    ``limits`` (a :class:`ddlock._pprof.Limits`, a dict of its fields, or
    None for the defaults and ``DDLOCK_READ_MAX_*``) bounds each file, and
    ``max_samples`` also the samples of all files together: LimitError.
    """
    lim = _pprof.Limits.resolve(limits)
    profiles = []
    total = 0
    for path in paths:
        try:
            profile = _pprof.parse_file(path, limits=lim)
        except (OSError, EOFError) as exc:  # a DecodeError names the file already
            raise _pprof.DecodeError("%s: not a readable pprof profile: %s" % (path, exc)) from None
        total += len(profile.samples)
        if total > lim.max_samples:
            raise lim.exceeded("max_samples", "the %d files hold more samples together" % len(paths))
        profiles.append(profile)
    return _pprof.merge(profiles)


# ---------------------------------------------------------------------------
# Lock names
# ---------------------------------------------------------------------------


class LockName(NamedTuple):
    """A ``lock name`` label split into ``file``, ``line`` and ``variable``
    (None when the profiler found no variable: the label is ``file:line``)."""

    label: str
    file: str
    line: Optional[int]
    variable: Optional[str]

    @property
    def site(self) -> str:
        return "%s:%d" % (self.file, self.line) if self.line is not None else self.file


_NAMED_RE = re.compile(r'\A(?P<file>.*?):(?P<line>\d+):(?P<var>[^:\s"]+(?:\["[^"]*"\])?|[^:\s]+)\Z')
_SITE_RE = re.compile(r"\A(?P<file>.*):(?P<line>\d+)\Z")
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{6,}|<[^<>]* object at [^<>]*>|\bat 0x")
# a variable or attribute, or an item of one: _locks["db"], shard_locks[2]
_IDENT_RE = re.compile(r'\A[^\W\d]\w*(?:\.[^\W\d]\w*)*(?:\[(?:"[^"]*"|-?\d+)\])?\Z')


def parse_lock_name(label: str) -> LockName:
    m = _NAMED_RE.match(label)
    if m is not None and _IDENT_RE.match(m.group("var")):
        return LockName(label, m.group("file"), int(m.group("line")), m.group("var"))
    m = _SITE_RE.match(label)
    if m is not None:
        return LockName(label, m.group("file"), int(m.group("line")), None)
    return LockName(label, label, None, None)


def variable_names(labels: Iterable[str]) -> List[str]:
    """Distinct variable names carried by ``labels``, sorted."""
    return sorted({n.variable for n in map(parse_lock_name, labels) if n.variable})


def lock_names(profile: _pprof.Profile) -> List[str]:
    """Distinct ``lock name`` labels of ``profile``, sorted."""
    return sorted({str(s.labels[LOCK_NAME]) for s in profile.samples if LOCK_NAME in s.labels})


# ---------------------------------------------------------------------------
# The success criteria of the seed (one implementation, shared)
# ---------------------------------------------------------------------------


class Criterion(NamedTuple):
    name: str
    ok: Optional[bool]  # None: not applicable (skipped)
    detail: str


def _sample_list(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += ", ... (%d more)" % (len(items) - limit)
    return shown or "none"


def check_lock_names(
    labels: Iterable[str],
    expect: Iterable[str] = (),
    groups: Optional[Sequence[Tuple[str, Sequence[str]]]] = None,
) -> List[Criterion]:
    """Check ``lock name`` labels against the seed's success criteria.

    * names visible: at least one label is ``file:line:variable``;
    * distinguishable: more than one distinct name when locks come from
      more than one creation site;
    * no ``threading.py:...`` names;
    * no addresses (``0x7f...``, ``<... object at ...>``);
    * ``expect``: each variable name is present;
    * ``groups``: ``(criterion title, [variable names])``, each name present.
    """
    labels = sorted(set(labels))
    expect = list(expect)
    parsed = [parse_lock_name(x) for x in labels]
    named = [n for n in parsed if n.variable]
    out: List[Criterion] = []

    if not labels:
        out.append(Criterion("lock samples present", False, "the profiles hold no sample with a 'lock name' label"))
    else:
        out.append(Criterion("lock samples present", True, "%d distinct lock name(s)" % len(labels)))

    if named:
        out.append(Criterion("names visible", True, "%d of %d names carry a variable, e.g. %s"
                             % (len(named), len(parsed), named[0].label)))
    else:
        hint = ""
        if parsed and all(n.line is not None for n in parsed):
            hint = " (only file:line sites: was DD_PROFILING_LOCK_NAME_RESOLUTION disabled?)"
        out.append(Criterion("names visible", False, "no lock name has the form file:line:variable%s; found: %s"
                             % (hint, _sample_list(labels))))

    sites = {n.site for n in parsed}
    wanted_all = set(expect)
    for _, names in groups or ():
        wanted_all.update(names)
    several = len(sites) > 1 or len(wanted_all) > 1
    title = "names distinguishable"
    if not labels:
        out.append(Criterion(title, False, "no lock names at all"))
    elif not several:
        out.append(Criterion(title, True, "one lock creation site only (%s)" % _sample_list(sorted(sites))))
    elif len(labels) > 1:
        out.append(Criterion(title, True, "%d distinct names (%d variables) from %d creation sites"
                             % (len(labels), len({n.variable for n in named}), len(sites))))
    else:
        out.append(Criterion(title, False, "several locks expected but every sample has the same name: %s"
                             % labels[0]))

    generic = [n.label for n in parsed if os.path.basename(n.file) == "threading.py"]
    out.append(Criterion("no threading.py names", not generic,
                         "none" if not generic else "generic names: %s" % _sample_list(generic)))

    addresses = [x for x in labels if _ADDRESS_RE.search(x)]
    out.append(Criterion("no addresses", not addresses,
                         "none" if not addresses else "names with memory addresses: %s" % _sample_list(addresses)))

    found_vars = {n.variable for n in named}
    checks: List[Tuple[str, Sequence[str]]] = list(groups or [])
    if expect:
        checks.append(("expected names present", expect))
    for title, wanted in checks:
        wanted = list(wanted)
        absent = [w for w in wanted if w not in found_vars and w not in labels]
        if absent:
            out.append(Criterion(title, False, "missing %s; variables found: %s"
                                 % (", ".join(absent), _sample_list(sorted(found_vars), 12))))
        else:
            shown = [next((n.label for n in named if n.variable == w), w) for w in wanted]
            out.append(Criterion(title, True, ", ".join(shown)))
    return out


def compare_name_sets(file_labels: Iterable[str], upload_labels: Iterable[str]) -> Criterion:
    """Criterion: the upload carries the same variable names as the files."""
    files = set(variable_names(file_labels))
    uploaded = set(variable_names(upload_labels))
    title = "upload carries the same names as the files"
    if not uploaded and not files:
        return Criterion(title, False, "no variable names in files nor uploads")
    if files == uploaded:
        return Criterion(title, True, "%d variable names in both: %s" % (len(files), _sample_list(sorted(files), 10)))
    parts = []
    if files - uploaded:
        parts.append("only in files: %s" % _sample_list(sorted(files - uploaded)))
    if uploaded - files:
        parts.append("only in uploads: %s" % _sample_list(sorted(uploaded - files)))
    return Criterion(title, False, "; ".join(parts))


def format_criteria(criteria: Sequence[Criterion], width: int = WIDTH) -> str:
    """One verdict line per criterion (``PASS``/``FAIL``/``SKIP``), details wrapped."""
    lines = []
    for c in criteria:
        verdict = "SKIP" if c.ok is None else ("PASS" if c.ok else "FAIL")
        head = "%s  %s: " % (verdict, c.name)
        lines.extend(_wrap(head + c.detail, width, " " * 6))
    return "\n".join(lines)


def wrap(text: str, width: int = WIDTH, indent: str = "    ") -> List[str]:
    """``text`` broken at spaces into lines of at most ``width`` columns
    (a single longer word stays whole); continuation lines are indented."""
    return _wrap(text, width, indent)


_UNITS = ("ns", "µs", "ms", "s", "min", "%")


def _wrap(text: str, width: int, indent: str) -> List[str]:
    words: List[str] = []
    for w in text.split(" "):  # never separate a number from its unit
        if words and w.rstrip(",;:)") in _UNITS and words[-1][-1:].isdigit():
            words[-1] += " " + w
        else:
            words.append(w)
    lines: List[str] = []
    cur = ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = indent + w
        else:
            cur = cur + " " + w if cur else w
    if cur:
        lines.append(cur)
    return lines


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------


def lock_key(labels: Dict[str, object]) -> Optional[str]:
    """The row a sample belongs to: its ``lock name`` label, with its
    ``lock module`` and ``lock owner`` when it has them (locks of one
    creation site held by objects of different types are different rows)."""
    label = labels.get(LOCK_NAME)
    if label is None:
        return None
    module, owner = labels.get(LOCK_MODULE), labels.get(LOCK_OWNER)
    if module is None and owner is None:
        return str(label)
    return _SEP.join((str(label), str(module or ""), str(owner or "")))


def split_lock_key(key: str) -> Tuple[str, Optional[str], Optional[str]]:
    """(lock name, module or None, owner or None) of a :func:`lock_key`."""
    label, _, rest = key.partition(_SEP)
    module, _, owner = rest.partition(_SEP)
    return label, module or None, owner or None


def describe_lock(key: str) -> str:
    """A lock as a reader places it: module, owner and attribute
    (``logging FileHandler.lock``), ``(anonymous)`` without a name."""
    label, module, owner = split_lock_key(key)
    name = parse_lock_name(label).variable or "(anonymous)"
    if owner:
        name = "%s.%s" % (owner, name)
    return "%s %s" % (module, name) if module else name


class LockStats(object):
    """Totals of one lock (a lock name, placed by module and owner), and
    its values per stack (root-first)."""

    __slots__ = ("key", "label", "name", "module", "owner", "acquires", "releases", "wait_ns",
                 "hold_ns", "stacks")

    def __init__(self, key: str) -> None:
        self.key = key
        self.label, self.module, self.owner = split_lock_key(key)
        self.name = parse_lock_name(self.label)
        self.acquires = 0
        self.releases = 0
        self.wait_ns = 0
        self.hold_ns = 0
        # stack (tuple of frames, leaf first) -> [acquires, wait, releases, hold]
        self.stacks: Dict[Tuple[_pprof.Frame, ...], List[int]] = {}

    def value(self, which: str) -> int:
        return self.wait_ns if which == "wait" else self.hold_ns

    @property
    def display(self) -> str:
        return describe_lock(self.key)


def collect_lock_stats(profile: _pprof.Profile) -> Dict[str, LockStats]:
    """``{lock key: LockStats}`` over every sample of ``profile`` (the key:
    :func:`lock_key`, the ``lock name`` label itself for an unplaced lock)."""
    idx = []
    for vt in (ACQUIRE, WAIT, RELEASE, HOLD):
        try:
            idx.append(profile.value_index(vt))
        except ValueError:
            idx.append(None)
    out: Dict[str, LockStats] = {}
    for s in profile.samples:
        label = lock_key(s.labels)
        if label is None:
            continue
        vals = [s.values[i] if i is not None and i < len(s.values) else 0 for i in idx]
        if not any(vals):
            continue  # a holder-wait or condition-wait sample (their own sections)
        st = out.get(label)
        if st is None:
            st = out[label] = LockStats(label)
        st.acquires += vals[0]
        st.wait_ns += vals[1]
        st.releases += vals[2]
        st.hold_ns += vals[3]
        key = tuple(s.frames)
        acc = st.stacks.get(key)
        if acc is None:
            st.stacks[key] = list(vals)
        else:
            for i in range(4):
                acc[i] += vals[i]
    return out


# ---------------------------------------------------------------------------
# Terminal report
# ---------------------------------------------------------------------------


def format_ns(ns: float) -> str:
    """Human units: ``850 ns``, ``12.3 µs``, ``4.56 ms``, ``1.23 s``, ``2.5 min``."""
    ns = float(ns)
    if ns < 1000:
        return "%d ns" % round(ns)
    for unit, scale in (("µs", 1e3), ("ms", 1e6), ("s", 1e9)):
        v = ns / scale
        if v < 999.5 or unit == "s" and v < 600:
            return "%s %s" % (_three(v), unit)
    return "%s min" % _three(ns / 60e9)


def _three(v: float) -> str:
    if v >= 99.95:
        return "%.0f" % v
    if v >= 9.995:
        return "%.1f" % v
    return "%.2f" % v


def _count(n: int) -> str:
    return "{:,}".format(int(n))


def _pct(part: float, whole: float) -> str:
    if whole <= 0:
        return "-"
    p = 100.0 * part / whole
    return "%.1f%%" % p if p >= 0.05 or p == 0 else "<0.1%"


def _fit(text: str, width: int) -> str:
    """Shorten ``text`` to ``width`` columns, keeping its end (the name)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    return "…" + text[-(width - 1):]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str,
           flex: Sequence[int], width: int = WIDTH) -> List[str]:
    """Aligned columns (``align``: one of ``<``/``>`` per column); the
    ``flex`` columns are shortened (from the left) to fit ``width``."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    total = sum(widths) + 2 * (len(widths) - 1)
    excess = total - width
    while excess > 0:
        # take from the widest flexible column that can still give
        i = max(flex, key=lambda c: widths[c])
        if widths[i] <= max(8, len(headers[i])):
            break
        widths[i] -= 1
        excess -= 1

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            cell = _fit(cell, widths[i])
            parts.append(cell.ljust(widths[i]) if align[i] == "<" else cell.rjust(widths[i]))
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return out


def _fit_site(site: str, width: int) -> str:
    """Shorten ``file.py:123`` in the middle of the file name."""
    if len(site) <= width:
        return site
    head, colon, line = site.rpartition(":")
    if not colon or not line.isdigit():
        return _fit(site, width)
    tail = ":" + line
    stem, dot, ext = head.rpartition(".")
    keep_end = (dot + ext) if dot and len(ext) <= 4 else ""
    room = width - len(tail) - len(keep_end) - 1
    if room < 3:
        return _fit(site, width)
    body = head[: len(head) - len(keep_end)]
    left = (room + 1) // 2
    right = room - left
    return body[:left] + "…" + (body[-right:] if right else "") + keep_end + tail


def render_lock_table(stats: Dict[str, LockStats], by: str = "wait", top: Optional[int] = 10,
                      width: int = WIDTH) -> List[str]:
    """Locks sorted by total ``by`` (``wait``/``hold``): name, creation site,
    acquires, releases, then ``by`` with its share of the total, then the
    other value."""
    other = "hold" if by == "wait" else "wait"
    total = sum(s.value(by) for s in stats.values())
    ordered = sorted(stats.values(), key=lambda s: (-s.value(by), -s.value(other), -s.acquires, s.key))
    shown = ordered if top is None else ordered[:top]
    rows = []
    for rank, s in enumerate(shown, 1):
        rows.append([
            str(rank),
            s.display,
            s.name.site,
            _count(s.acquires),
            _count(s.releases),
            format_ns(s.value(by)),
            _pct(s.value(by), total),
            format_ns(s.value(other)),
        ])
    headers = ["#", "lock", "created at", "acquires", "releases", by, "%s%%" % by, other]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    if excess > 0:  # shorten the creation site first (middle of the file name), then the name
        cut = min(excess, max(widths[2] - 16, 0))
        widths[2] -= cut
        excess -= cut
        if excess > 0:
            widths[1] = max(widths[1] - excess, 12)
        for r in rows:
            r[2] = _fit_site(r[2], widths[2])
    out = _table(headers, rows, "<<<>>>>>", flex=(1, 2), width=width)
    if top is not None and len(ordered) > top:
        out.append("(%d more lock names not shown; --top N)" % (len(ordered) - top))
    return out


def render_stacks(stats: Dict[str, LockStats], by: str = "wait", locks: int = 5, stacks: int = 3,
                  depth: int = 4, width: int = WIDTH) -> List[str]:
    """The hottest stacks (by ``by``) of the top ``locks`` lock names."""
    vi = 1 if by == "wait" else 3
    ordered = [s for s in sorted(stats.values(), key=lambda s: (-s.value(by), s.key)) if s.value(by) > 0]
    out: List[str] = []
    for s in ordered[:locks]:
        events = "%s acquires" % _count(s.acquires) if by == "wait" else "%s releases" % _count(s.releases)
        title = s.label if s.module is None and s.owner is None else "%s (%s)" % (s.display, s.label)
        out.append(_fit("%s   %s %s, %s" % (title, by, format_ns(s.value(by)), events), width))
        hot = sorted(((v[vi], k, v) for k, v in s.stacks.items() if v[vi] > 0), key=lambda t: (-t[0], t[1]))
        for n, (value, frames, v) in enumerate(hot[:stacks], 1):
            events = v[0] if by == "wait" else v[2]
            out.append(_fit("  %d. %s %s (%s of this lock), %s %s" % (
                n, by, format_ns(value), _pct(value, s.value(by)), _count(events),
                "acquires" if by == "wait" else "releases"), width))
            out.extend(frame_lines(frames, depth, width))
        if len(hot) > stacks:
            out.append("     (%d more stacks)" % (len(hot) - stacks))
    if not out:
        out.append("  (no %s time recorded)" % by)
    return out


def render_report(profile: _pprof.Profile, paths: Sequence[str] = (), top: int = 10, stacks: int = 3,
                  stack_locks: int = 5, width: int = WIDTH) -> str:
    """The whole terminal report of ``profile``."""
    stats = collect_lock_stats(profile)
    total_wait = sum(s.wait_ns for s in stats.values())
    total_hold = sum(s.hold_ns for s in stats.values())
    acquires = sum(s.acquires for s in stats.values())
    out: List[str] = []
    title = "ddlock report"
    if paths:
        title += " - %d file%s" % (len(paths), "" if len(paths) == 1 else "s")
    if profile.duration_nanos:
        title += ", %s profiled" % format_ns(profile.duration_nanos)
    out.append(_fit(title, width))
    out.append(_fit("%d lock name%s, %s acquires, %s total wait, %s total hold, %d samples" % (
        len(stats), "" if len(stats) == 1 else "s", _count(acquires), format_ns(total_wait), format_ns(total_hold), len(profile.samples)), width))
    waits = render_condition_waits(profile, top=top, stacks=stacks, width=width)
    if not stats:
        out.append("")
        out.append("no lock samples in these profiles")
        out.extend(waits)
        return "\n".join(out) + "\n"
    for by in ("wait", "hold"):
        out.append("")
        out.append("Top locks by %s" % by)
        out.extend(render_lock_table(stats, by=by, top=top, width=width))
    for by in ("wait", "hold"):
        out.append("")
        out.append("Hottest stacks by %s (leaf first)" % by)
        out.extend(render_stacks(stats, by=by, locks=stack_locks, stacks=stacks, width=width))
    from ._holders import render_holders

    out.extend(render_holders(profile, locks=stack_locks, holders=stacks, width=width))
    out.extend(waits)
    return "\n".join(out) + "\n"


def render_condition_waits(profile: _pprof.Profile, top: int = 10, stacks: int = 3, depth: int = 4,
                           width: int = WIDTH) -> List[str]:
    """Condition waits (Condition, Event, Queue, Barrier, Future and asyncio
    waits: waiting for a resource, not for a lock), apart from lock
    contention: one row per waited object by total wait, then its hottest
    waiting stacks. Empty when the profile has none."""
    try:
        ci, ti = profile.value_index(CONDITION_WAIT), profile.value_index(CONDITION_WAIT_TIME)
    except ValueError:
        return []
    # name -> [type, waits, wait ns, {outcome: waits}, {stack: [waits, ns]}]
    rows: Dict[str, list] = {}
    for s in profile.samples:
        n = s.values[ci] if ci < len(s.values) else 0
        t = s.values[ti] if ti < len(s.values) else 0
        if n <= 0 and t <= 0:
            continue
        name = str(s.labels.get(LOCK_NAME, "(no lock name)"))
        r = rows.setdefault(name, [str(s.labels.get("lock type", "")), 0, 0, {}, {}])
        r[1] += n
        r[2] += t
        outcome = str(s.labels.get("wait outcome", "?"))
        r[3][outcome] = r[3].get(outcome, 0) + n
        acc = r[4].setdefault(tuple(s.frames), [0, 0])
        acc[0] += n
        acc[1] += t
    if not rows:
        return []
    total = sum(r[2] for r in rows.values())
    ordered = sorted(rows.items(), key=lambda kv: (-kv[1][2], kv[0]))
    out = ["", "Condition waits (waiting for a resource: Condition, Event, Queue...; not lock contention)"]
    table = []
    for rank, (name, r) in enumerate(ordered[:top], 1):
        ln = parse_lock_name(name)
        outcomes = ", ".join("%s %s" % (k, _count(v)) for k, v in sorted(r[3].items()))
        table.append([str(rank), ln.variable or "(anonymous)", r[0], _fit_site(ln.site, 24), _count(r[1]),
                      format_ns(r[2]), _pct(r[2], total), outcomes])
    out.extend(_table(["#", "waited on", "type", "created at", "waits", "wait", "wait%", "outcomes"],
                      table, "<<<<>>><", flex=(1, 3, 7), width=width))
    if len(ordered) > top:
        out.append("(%d more waited objects not shown; --top N)" % (len(ordered) - top))
    for name, r in ordered[: min(top, 5)]:
        out.append(_fit("%s   condition wait %s, %s waits" % (name, format_ns(r[2]), _count(r[1])), width))
        hot = sorted(r[4].items(), key=lambda kv: (-kv[1][1], kv[0]))
        for n, (frames, (count, ns)) in enumerate(hot[:stacks], 1):
            out.append(_fit("  %d. wait %s (%s of this object), %s waits" % (
                n, format_ns(ns), _pct(ns, r[2]), _count(count)), width))
            out.extend(frame_lines(frames, depth, width))
    return out


# ---------------------------------------------------------------------------
# Flame graph (SVG)
# ---------------------------------------------------------------------------


class _Node(object):
    __slots__ = ("name", "value", "children", "kind")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind  # "root", "lock" or "frame"
        self.value = 0
        self.children: "OrderedDict[str, _Node]" = OrderedDict()

    def child(self, name: str, kind: str) -> "_Node":
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node(name, kind)
        return node


def _build_tree(profile: _pprof.Profile, which: str) -> Tuple[_Node, int]:
    value_type = VALUE_TYPES[which]
    root = _Node("all locks", "root")
    depth = 1
    try:
        vi = profile.value_index(value_type)
    except ValueError:  # a profile without that sample type
        return root, depth
    for s in profile.samples:
        v = s.values[vi] if vi < len(s.values) else 0
        if v <= 0:
            continue
        root.value += v
        node = root.child(lock_key(s.labels) or "(no lock name)", "lock")
        node.value += v
        if which == "holder":  # lock -> the holder thread -> where it was
            node = node.child("held by %s" % s.labels.get("thread name", "?"), "frame")
            node.value += v
        frames = s.frames
        for f in reversed(frames):  # root-most first
            node = node.child(_frame_label(f), "frame")
            node.value += v
        depth = max(depth, len(frames) + 2)
    return root, depth


def frame_lines(frames: Sequence[_pprof.Frame], depth: int, width: int) -> List[str]:
    """A stack's first ``depth`` frames, one indented line each (function
    names aligned, then file:line), and how many more there are."""
    out = []
    shown = frames[:depth]
    fw = min(max([len(f.function_name or "?") for f in shown] + [1]), 40)
    for f in shown:
        where = os.path.basename(f.filename) if f.filename else ""
        if where and f.line:
            where = "%s:%d" % (where, f.line)
        out.append(_fit("       %s  %s" % (_fit(f.function_name or "?", fw).ljust(fw), where), width)
                   .rstrip())
    if len(frames) > depth:
        more = len(frames) - depth
        out.append("       … %d more frame%s" % (more, "s" if more > 1 else ""))
    return out


def _frame_label(f: _pprof.Frame) -> str:
    base = os.path.basename(f.filename) if f.filename else ""
    if base and f.line:
        return "%s (%s:%d)" % (f.function_name or "?", base, f.line)
    return f.function_name or "?"


def _color(name: str, kind: str) -> str:
    h = int(hashlib.md5(name.encode("utf-8", "replace")).hexdigest()[:8], 16)
    if kind == "root":
        return "rgb(200,200,200)"
    if kind == "lock":  # cool hues: lock names stand apart from frames
        hue = 0.50 + (h % 1000) / 1000.0 * 0.25
        r, g, b = colorsys.hls_to_rgb(hue, 0.72, 0.55)
    else:  # classic warm flame colors, light enough for black text
        hue = 0.0 + (h % 1000) / 1000.0 * 0.13
        r, g, b = colorsys.hls_to_rgb(hue, 0.70 + ((h >> 10) % 100) / 1000.0, 0.85)
    return "rgb(%d,%d,%d)" % (r * 255, g * 255, b * 255)


def render_flamegraph(profile: _pprof.Profile, which: str = "wait", title: Optional[str] = None,
                      width: int = 1200, row_height: int = 18, min_width: float = 0.3) -> str:
    """An SVG flame graph of ``which`` (``wait`` or ``hold``) time: one tower
    per lock name (the lock is the root of its stacks), widths proportional
    to the value, a ``<title>`` tooltip on every frame."""
    if which not in VALUE_TYPES:
        raise ValueError("value must be one of %s, not %r" % (", ".join(VALUE_TYPES), which))
    root, depth = _build_tree(profile, which)
    pad = 10
    top_margin = 48
    bottom_margin = 24
    height = top_margin + depth * row_height + bottom_margin
    char_w = 6.6  # average glyph width at font-size 11
    title = title or ("ddlock condition wait time by waited object" if which == CONDITION_WAIT_TIME
                      else "ddlock %s time by lock" % which)
    total = root.value
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
        '<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="%d" height="%d" viewBox="0 0 %d %d">'
        % (width, height, width, height),
        "<style>text{font-family:Verdana,Helvetica,Arial,sans-serif;font-size:11px;fill:#000}"
        "rect{stroke:#fff;stroke-width:0.5}.t{font-size:16px}.s{font-size:12px;fill:#555}"
        "g:hover rect{stroke:#000;stroke-width:1}</style>",
        '<rect x="0" y="0" width="%d" height="%d" fill="#f8f8f8" stroke="none"/>' % (width, height),
        '<text class="t" x="%d" y="22" text-anchor="middle">%s</text>' % (width // 2, escape(title)),
        '<text class="s" x="%d" y="40" text-anchor="middle">%s</text>' % (
            width // 2, escape("total %s %s across %d lock names; hover a frame for details"
                               % (which, format_ns(total), len(root.children)))),
    ]
    if total <= 0:
        parts.append('<text x="%d" y="%d" text-anchor="middle">no %s time recorded</text>'
                     % (width // 2, top_margin + row_height, escape(which)))
        parts.append("</svg>")
        return "\n".join(parts) + "\n"
    scale = (width - 2 * pad) / float(total)
    base_y = height - bottom_margin  # flame graphs grow upwards from the root

    def draw(node: _Node, x: float, level: int, lock: Optional[_Node]) -> None:
        w = node.value * scale
        if w < min_width:
            return
        y = base_y - (level + 1) * row_height
        share = _pct(node.value, total)
        if node.kind == "root":
            tip = "all locks\n%s %s (100%%)" % (which, format_ns(node.value))
            label = "all locks"
        elif node.kind == "lock":
            name, module, owner = split_lock_key(node.name)
            ln = parse_lock_name(name)
            tip = "lock %s\n%s %s (%s of all)" % (name, which, format_ns(node.value), share)
            if module or owner:
                tip = "%s: %s" % (describe_lock(node.name), tip)
            label = "%s (%s)" % (describe_lock(node.name) if module or owner
                                 else ln.variable or "anonymous lock", ln.site)
        else:
            tip = "%s\n%s %s (%s of all, %s of this lock)\nlock %s" % (
                node.name, which, format_ns(node.value), share,
                _pct(node.value, lock.value if lock else 0),
                split_lock_key(lock.name)[0] if lock else "?")
            label = node.name
        parts.append("<g><title>%s</title>" % escape(tip))
        parts.append('<rect x="%.2f" y="%d" width="%.2f" height="%d" fill="%s" rx="2" ry="2"/>'
                     % (x, y, w, row_height - 1, _color(node.name, node.kind)))
        room = int((w - 6) / char_w)
        if room >= 3:
            if len(label) > room:
                label = label[: max(room - 2, 1)] + ".."
            parts.append('<text x="%.2f" y="%d">%s</text>' % (x + 3, y + row_height - 6, escape(label)))
        parts.append("</g>")
        cx = x
        for ch in sorted(node.children.values(), key=lambda c: -c.value):
            draw(ch, cx, level + 1, ch if ch.kind == "lock" else lock)
            cx += ch.value * scale

    draw(root, float(pad), 0, None)
    parts.append('<text class="s" x="%d" y="%d">%s</text>' % (
        pad, height - 6, escape("ddlock - value: %s (%s); root at the bottom, callers below callees"
                                % (which, VALUE_TYPES[which]))))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_flamegraph_file(profile: _pprof.Profile, path: str, which: str = "wait") -> None:
    data = render_flamegraph(profile, which=which)
    with open(path, "w", encoding="utf-8") as f:
        f.write(data)

