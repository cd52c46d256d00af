"""ddlock configuration: environment variables (the names Datadog's Python
profiler uses) and keyword arguments of ``ddlock.start()``.

Keyword names are the variable names lowercased without ``DD_PROFILING_``
(``capture_pct`` for ``DD_PROFILING_CAPTURE_PCT``); a few have short aliases.
Explicit keywords override the environment. Malformed values raise
``ValueError`` naming the variable and the value (``strict``) or log one
warning and fall back to the default (``ddlock.auto``).
"""

import math
import os
import platform
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Config", "from_env", "VARIABLES", "redact_url"]

DEFAULT_EXCLUDES = ("threading", "asyncio", "concurrent", "ddlock")
# every primitive ddlock profiles; DD_PROFILING_LOCK_TYPES picks among them
LOCK_TYPES = ("Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition",
              "asyncio.Lock", "asyncio.Semaphore", "asyncio.BoundedSemaphore",
              "asyncio.Condition")
DEFAULT_SOCKET = "/var/run/datadog/apm.socket"

_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("0", "false", "no", "off", "n", "f")


def _parse_bool(raw):
    v = str(raw).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError("expected a boolean (true/false)")


def _parse_float(lo=None, hi=None, lo_open=False):
    def parse(raw):
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
        if math.isnan(v) or math.isinf(v):
            raise ValueError("expected a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise ValueError("must be %s %s" % (">" if lo_open else ">=", lo))
        if hi is not None and v > hi:
            raise ValueError("must be <= %s" % hi)
        return v

    return parse


def _parse_int(lo=None, hi=None):
    def parse(raw):
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        if isinstance(raw, int):
            v = raw
        else:
            try:
                v = int(str(raw).strip(), 10)
            except (TypeError, ValueError):
                raise ValueError("expected an integer") from None
        if lo is not None and v < lo:
            raise ValueError("must be >= %d" % lo)
        if hi is not None and v > hi:
            raise ValueError("must be <= %d" % hi)
        return v

    return parse


def _parse_str(raw):
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw


def _parse_list(raw):
    if isinstance(raw, (list, tuple, set, frozenset)):
        items = list(raw)
    else:
        items = str(raw).split(",")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("expected a comma-separated list of module names")
        item = item.strip()
        if item:
            out.append(item)
    return tuple(out)


REDACTED = "***"


def redact_url(url):
    """``url`` as it may be shown: user and password replaced by ``***``,
    every query value too (``?token=***``), no fragment. Never raises."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = REDACTED + "@" + netloc.rpartition("@")[2]
        query = "&".join(
            (item.partition("=")[0] + "=" + REDACTED) if "=" in item else REDACTED
            for item in parts.query.split("&")) if parts.query else ""
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except Exception:  # not a URL: show nothing of it
        return REDACTED


def _join_endpoint(base, path):
    """``base`` with ``path`` appended to its path, before its query:
    ``http://h:1/x?token=t`` + ``/profiling/v1/input`` ->
    ``http://h:1/x/profiling/v1/input?token=t``."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + path, parts.query, ""))


def _check_http_url(s, schemes):
    try:
        parts = urlsplit(s)
        parts.port  # raises ValueError when the port is not a number in range
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in schemes:
        raise ValueError("expected %s URL" % " or ".join("a %s://" % x for x in schemes))
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("the URL has no host")
    return s


def _parse_url(raw):
    s = _parse_str(raw)
    if s is None or s == "":
        return None
    if not (s.startswith("http://") or s.startswith("https://") or s.startswith("unix://")):
        raise ValueError("expected an http://, https:// or unix:// URL")
    return _check_http_url(s, ("http", "https", "unix"))


def _parse_https_url(raw):
    s = _parse_str(raw)
    if s is None or s == "":
        return None
    if not s.startswith("https://"):
        # the API key travels with every request to this URL
        raise ValueError("expected an https:// URL")
    return _check_http_url(s, ("https",))


def _parse_mode(raw):
    if isinstance(raw, int) and not isinstance(raw, bool):
        v = raw
    else:
        try:
            v = int(str(raw).strip(), 8)
        except (TypeError, ValueError):
            raise ValueError("expected an octal file mode such as 600") from None
    if not 0 <= v <= 0o777:
        raise ValueError("expected an octal file mode such as 600")
    return v


def _parse_lock_types(raw):
    if isinstance(raw, (list, tuple, set, frozenset)):
        items = list(raw)
    elif isinstance(raw, str):
        items = raw.split(",")
    else:
        raise ValueError("expected a comma-separated list of lock types")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("expected a comma-separated list of lock types")
        item = item.strip()
        if not item:
            continue
        if item not in LOCK_TYPES:
            raise ValueError("unknown lock type %r (known: %s)" % (item, ",".join(LOCK_TYPES)))
        if item not in out:
            out.append(item)
    return tuple(out)


# keyword -> (environment variable(s), parser, default)
VARIABLES = {
    "output_pprof": (("DD_PROFILING_OUTPUT_PPROF",), _parse_str, None),
    "capture_pct": (("DD_PROFILING_CAPTURE_PCT",), _parse_float(0.0, 100.0), 1.0),
    "max_frames": (("DD_PROFILING_MAX_FRAMES",), _parse_int(1, 4096), 64),
    "upload_interval": (("DD_PROFILING_UPLOAD_INTERVAL",), _parse_float(0.0, 86400.0, lo_open=True), 60.0),
    "lock_name_inspect_dir": (("DD_PROFILING_LOCK_NAME_INSPECT_DIR",), _parse_bool, True),
    "lock_exclude_modules": (("DD_PROFILING_LOCK_EXCLUDE_MODULES",), _parse_list, DEFAULT_EXCLUDES),
    "api_timeout_ms": (("DD_PROFILING_API_TIMEOUT_MS",), _parse_int(1, 3600000), 10000),
    "upload_enabled": (("DD_PROFILING_UPLOAD_ENABLED",), _parse_bool, True),
    "max_samples": (("DD_PROFILING_MAX_SAMPLES",), _parse_int(1, 10000000), 10000),
    "lock_wait_rate_ns": (("DD_PROFILING_LOCK_WAIT_RATE_NS",), _parse_int(0, 10**15), 1000000),
    "sampling_seed": (("DD_PROFILING_SAMPLING_SEED",), _parse_int(0, 2**63 - 1), 0),
    "output_mode": (("DD_PROFILING_OUTPUT_MODE",), _parse_mode, 0o600),
    # files this process keeps (the oldest it wrote are removed; 0 = all)
    "output_max_files": (("DD_PROFILING_OUTPUT_MAX_FILES",), _parse_int(0, 100000), 100),
    # no file is written while less would be left free on its filesystem
    "output_min_free_mb": (("DD_PROFILING_OUTPUT_MIN_FREE_MB",), _parse_int(0, 2**40), 100),
    "debug": (("DD_PROFILING_DEBUG", "DD_TRACE_DEBUG"), _parse_bool, False),
    "resolve_names": (("DD_PROFILING_LOCK_NAME_RESOLUTION",), _parse_bool, True),
    "lock_types": (("DD_PROFILING_LOCK_TYPES",), _parse_lock_types, LOCK_TYPES),
    "agent_url": (("DD_TRACE_AGENT_URL",), _parse_url, None),
    "agent_host": (("DD_AGENT_HOST",), _parse_str, None),
    "agent_port": (("DD_TRACE_AGENT_PORT",), _parse_int(1, 65535), None),
    "api_key": (("DD_API_KEY",), _parse_str, None),
    "site": (("DD_SITE",), _parse_str, "datadoghq.com"),
    "service": (("DD_SERVICE",), _parse_str, None),
    "env": (("DD_ENV",), _parse_str, None),
    "version": (("DD_VERSION",), _parse_str, None),
    "tags": (("DD_TAGS",), _parse_str, None),
    "ca_file": (("DDLOCK_CA_FILE",), _parse_str, None),
    # agentless only: replaces https://intake.profile.<site>/api/v2/profile
    # (a private intake, or a loopback HTTPS server in tests)
    "intake_url": (("DDLOCK_INTAKE_URL",), _parse_https_url, None),
    # a contended wait longer than this is reported while it lasts (0: off)
    "lock_stuck_s": (("DD_PROFILING_LOCK_STUCK_S",), _parse_float(0.0, 86400.0), 10.0),
    # condition-wait / condition-wait-time: Condition, Event, Queue waits
    "condition_wait": (("DD_PROFILING_LOCK_CONDITION_WAIT",), _parse_bool, True),
    # lock-order checking: every acquire, inversions logged (ext/order.c)
    "lock_order": (("DD_PROFILING_LOCK_ORDER",), _parse_bool, False),
}

# settings holding a URL: shown redacted in messages
_URL_KEYS = ("agent_url", "intake_url")

ALIASES = {"interval": "upload_interval", "inspect_dir": "lock_name_inspect_dir",
           "exclude_modules": "lock_exclude_modules", "timeout_ms": "api_timeout_ms",
           "seed": "sampling_seed", "wait_rate_ns": "lock_wait_rate_ns"}


class Config(object):
    """Resolved configuration; attribute names are the keyword names."""

    def __init__(self, values, warnings):
        self.__dict__.update(values)
        self.warnings = warnings

    # -- upload target ------------------------------------------------------
    def upload_target(self):
        """(url, unix_socket, api_key) for the exporter; url None = no upload."""
        if not self.upload_enabled:
            return None, None, None
        base = None
        if self.agent_url:
            base = self.agent_url
        elif self.agent_host or self.agent_port:
            host = self.agent_host or "localhost"
            if ":" in host and not host.startswith("["):
                host = "[%s]" % host
            base = "http://%s:%d" % (host, self.agent_port or 8126)
        elif self.api_key:
            url = self.intake_url or ("https://intake.profile.%s/api/v2/profile"
                                      % (self.site or "datadoghq.com"))
            return url, None, self.api_key
        elif os.path.exists(DEFAULT_SOCKET):
            base = "unix://" + DEFAULT_SOCKET
        else:
            base = "http://localhost:8126"
        if base.startswith("unix://"):
            return "http://localhost/profiling/v1/input", base[len("unix://"):], None
        return _join_endpoint(base, "/profiling/v1/input"), None, None

    def upload_target_shown(self):
        """Where uploads go, as it may be logged: credentials and query
        values redacted (see redact_url); None when not uploading."""
        url, unix_socket, _ = self.upload_target()
        if url is None:
            return None
        if unix_socket is not None:
            return "unix://" + unix_socket
        return redact_url(url)

    def tags_string(self, profiler_version):
        tags = []
        for key in ("service", "env", "version"):
            v = getattr(self, key)
            if v:
                tags.append("%s:%s" % (key, v))
        tags += [
            "language:python",
            "runtime:CPython",
            "runtime-id:%s" % uuid.uuid4(),
            "runtime_version:%s" % platform.python_version(),
            "profiler_version:%s" % profiler_version,
            "process_id:%d" % os.getpid(),
        ]
        if self.tags:
            for item in self.tags.replace(" ", ",").split(","):
                item = item.strip()
                if item:
                    tags.append(item)
        return ",".join(tags)


def _show(key, default):
    """A default as the user would write it in the environment."""
    if key == "output_mode":
        return "%o" % default
    return repr(default)


def from_env(overrides=None, strict=True, environ=None):
    """Build a Config from the environment and keyword overrides.

    strict: raise ValueError on a malformed value (ddlock.start); otherwise
    record a warning and use the default (ddlock.auto).
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    for alias, name in ALIASES.items():
        if alias in overrides:
            overrides[name] = overrides.pop(alias)
    unknown = sorted(set(overrides) - set(VARIABLES))
    if unknown:
        raise TypeError("ddlock.start() got unexpected keyword argument(s): %s" % ", ".join(unknown))
    values = {}
    warnings = []
    for key, (names, parse, default) in VARIABLES.items():
        if key in overrides and overrides[key] is not None:
            source, raw = key, overrides[key]
        else:
            source, raw = None, None
            for name in names:
                if name in environ:
                    source, raw = name, environ[name]
                    break
            if source is None:
                values[key] = default
                continue
            if raw.strip() == "" and key not in ("output_pprof", "api_key"):
                if strict:
                    raise ValueError("%s=%r: empty value" % (source, raw))
                warnings.append("%s=%r: empty value; using the default %s" % (source, raw, _show(key, default)))
                values[key] = default
                continue
        try:
            values[key] = parse(raw)
        except ValueError as exc:
            if key == "api_key":
                raw = "<redacted>"  # the key never appears in messages
            elif key in _URL_KEYS:
                raw = redact_url(raw) if isinstance(raw, str) else raw
            if strict:
                raise ValueError("%s=%r: %s" % (source, raw, exc)) from None
            warnings.append("%s=%r: %s; using the default %s" % (source, raw, exc, _show(key, default)))
            values[key] = default
    if values["output_pprof"] == "":
        values["output_pprof"] = None
    return Config(values, warnings)


def python_tag():
    return "%d.%d" % sys.version_info[:2]
