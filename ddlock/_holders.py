"""The report's "who made them wait" section (issue 18): for each lock, the
holders whose holding made others wait -- holder thread, where it was when
the wait began (the lock-holder-wait samples' stacks) and the total wait it
caused."""

from typing import Dict, List, Tuple

from . import _pprof

HOLDER_WAIT = "lock-holder-wait"


def collect_holders(profile: _pprof.Profile) -> Dict[str, Dict[Tuple[str, Tuple[_pprof.Frame, ...]], int]]:
    """``{lock name: {(holder thread name, stack leaf first): wait ns}}``."""
    try:
        vi = profile.value_index(HOLDER_WAIT)
    except ValueError:
        return {}
    out: Dict[str, Dict[Tuple[str, Tuple[_pprof.Frame, ...]], int]] = {}
    for s in profile.samples:
        v = s.values[vi] if vi < len(s.values) else 0
        if v <= 0:
            continue
        lock = str(s.labels.get("lock name", "(no lock name)"))
        key = (str(s.labels.get("thread name", s.labels.get("thread id", "?"))), tuple(s.frames))
        per = out.setdefault(lock, {})
        per[key] = per.get(key, 0) + v
    return out


def render_holders(profile: _pprof.Profile, locks: int = 5, holders: int = 3, depth: int = 3,
                   width: int = 100) -> List[str]:
    """Lines of the section; none when the profile has no holder waits."""
    from .report import _count, _fit, _pct, format_ns, frame_lines

    data = collect_holders(profile)
    if not data:
        return []
    out = ["", "Holders that made others wait (where the holder was when the wait began, leaf first)"]
    totals = sorted(((sum(v.values()), lock) for lock, v in data.items()), key=lambda t: (-t[0], t[1]))
    for total, lock in totals[:locks]:
        out.append(_fit("%s   caused %s of wait" % (lock, format_ns(total)), width))
        ranked = sorted(data[lock].items(), key=lambda kv: (-kv[1], kv[0][0]))
        for n, ((thread, frames), value) in enumerate(ranked[:holders], 1):
            where = frames[0].function_name if frames else "?"
            out.append(_fit("  %d. held by thread %s in %s: caused %s (%s)" % (
                n, thread, where, format_ns(value), _pct(value, total)), width))
            out.extend(frame_lines(frames, depth, width))
        if len(ranked) > holders:
            out.append("     (%s more holders/stacks)" % _count(len(ranked) - holders))
    return out
