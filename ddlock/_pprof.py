"""Pure-Python reader for pprof profiles (``perftools.profiles.Profile``).

No third-party dependency: this module carries its own small decoder for the
protobuf wire format (varints, 64/32-bit fixed fields, length-delimited
fields, packed and unpacked repeated scalars).  The field numbers are those of
``ext/proto/profile.proto``.

Entry points:

* :func:`parse_bytes` -- decode gzip-compressed or raw protobuf bytes;
* :func:`parse_file` -- the same for a file on disk;
* :class:`Limits` -- what reading one profile may cost (decompressed size,
  numbers of samples, locations, functions, strings and labels); a profile
  beyond them raises :class:`LimitError` before it can take the memory;
* :func:`merge` -- concatenate several profiles into one (ids renumbered);
* :func:`aggregate` -- sum samples that share a stack and labels;
* :func:`format_profile` / :func:`format_sample` -- human-readable dumps.

The result is a tree of plain Python objects: a :class:`Profile` whose
``samples`` are :class:`Sample` objects holding resolved :class:`Location`
objects (each a list of :class:`Frame` ``(function_name, filename, line)``),
the values in ``sample_types`` order, and ``labels`` as a dict
``{key: str_or_int}``.

This module must not import the ddlock C extension (nor anything from the
ddlock package), so it can be used on profiles written by any producer.
"""

from __future__ import annotations

import builtins
import io
import os
import zlib
from dataclasses import dataclass, field, fields
from typing import (Callable, Dict, Iterable, Iterator, List, Mapping as MappingT, NamedTuple,
                    Optional, Tuple, Union, cast)

__all__ = [
    "DecodeError",
    "Frame",
    "Function",
    "Label",
    "LimitError",
    "Limits",
    "Location",
    "Mapping",
    "Profile",
    "Sample",
    "ValueType",
    "aggregate",
    "decompress",
    "format_profile",
    "format_sample",
    "merge",
    "parse_bytes",
    "parse_file",
]

LabelValue = Union[str, int]

_U64 = 1 << 64
_I64_SIGN = 1 << 63
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DecodeError(ValueError):
    """The bytes are not a well-formed pprof profile."""


class LimitError(DecodeError):
    """The profile is larger than a reading limit (see :class:`Limits`)."""


_MIB = 1 << 20
_READ_CHUNK = 1 << 16
# at most this much decompressed output per step (no large temporaries)
_INFLATE_STEP = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Bounds on what reading one profile may cost; beyond any of them the
    reader raises :class:`LimitError` instead of taking the memory and time.

    The reader builds Python objects: about 5 KB and 60 us per sample of
    12 frames and 5 labels (CPython 3.11), so 500,000 samples are about
    2.5 GB and 30 s, the worst a profile within the defaults costs.  Real
    profiles are far below: a ddlock profile has at most
    ``DD_PROFILING_MAX_SAMPLES`` samples (10,000 by default, about 1 MB
    decompressed); a 200,000-sample profile is 17 MB.  The decompressed
    bytes are held while they are decoded, so ``max_bytes`` (64 MiB) is also
    about the memory a gzip bomb takes before it is refused.

    Each default can be changed with an environment variable
    (``DDLOCK_READ_MAX_BYTES``, ``DDLOCK_READ_MAX_SAMPLES``, ...; see
    :meth:`from_env`), every reading function takes ``limits=`` (a
    ``Limits`` or a dict of the fields to change) and ``python -m ddlock
    report|check`` take ``--max-bytes``, ``--max-samples``, ...
    """

    #: decompressed (raw protobuf) size in bytes
    max_bytes: int = 64 * _MIB
    #: samples (in ``report``/``check``: over all files read together)
    max_samples: int = 500_000
    max_locations: int = 1_000_000
    max_functions: int = 1_000_000
    #: string table entries
    max_strings: int = 1_000_000
    #: labels, summed over all samples
    max_labels: int = 5_000_000
    #: stack entries: location ids of all samples plus lines of all locations
    max_frames: int = 25_000_000

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError("Limits.%s must be a positive integer, got %r" % (f.name, v))

    @staticmethod
    def env_name(name: str) -> str:
        """The environment variable of limit ``name`` (``max_samples`` ->
        ``DDLOCK_READ_MAX_SAMPLES``)."""
        return "DDLOCK_READ_" + name.upper()

    @classmethod
    def from_env(cls, environ: Optional[MappingT[str, str]] = None, **overrides: int) -> "Limits":
        """The defaults, changed by the ``DDLOCK_READ_MAX_*`` environment
        variables, then by ``overrides``.  A malformed variable raises
        ValueError naming it."""
        environ = os.environ if environ is None else environ
        values: Dict[str, Optional[int]] = {}
        for f in fields(cls):
            raw = environ.get(cls.env_name(f.name))
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = parse_size(raw) if f.name == "max_bytes" else int(raw.strip(), 10)
            except ValueError:
                values[f.name] = None
            given = values[f.name]
            if given is None or given < 1:
                raise ValueError("%s=%r: expected a positive integer" % (cls.env_name(f.name), raw))
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError("unknown limit(s): %s" % ", ".join(unknown))
        values.update((k, v) for k, v in overrides.items() if v is not None)
        return cls(**cast(Dict[str, int], values))

    @classmethod
    def resolve(cls, limits: "Union[Limits, MappingT[str, int], None]") -> "Limits":
        """``limits`` as a Limits: None means :meth:`from_env`; a dict changes
        those fields of :meth:`from_env`."""
        if limits is None:
            return cls.from_env()
        if isinstance(limits, Limits):
            return limits
        return cls.from_env(None, **cast(Dict[str, int], dict(limits)))

    def exceeded(self, name: str, what: str) -> LimitError:
        """The error for going past limit ``name``: ``what`` says what is more
        (``"profile holds more samples"``)."""
        return LimitError(
            "%s than %s=%d (raise it with --%s or %s)"
            % (what, name, getattr(self, name), name.replace("_", "-"), self.env_name(name))
        )


def parse_size(text: str) -> int:
    """A byte count: an integer, optionally with a K, M or G suffix (powers
    of 1024): ``"512M"`` -> 536870912.  ValueError when malformed."""
    t = str(text).strip().upper()
    if t.endswith("B") and len(t) > 1 and t[-2] in "KMG":
        t = t[:-1]
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    if not t.isdigit():
        raise ValueError("expected a size such as 1048576, 512K, 256M or 1G, got %r" % (text,))
    return int(t) * scale


# ---------------------------------------------------------------------------
# Result objects
# ---------------------------------------------------------------------------


class ValueType(NamedTuple):
    """A sample type, e.g. ``ValueType("lock-acquire", "count")``.

    Being a tuple, it compares equal to ``("lock-acquire", "count")``.
    """

    type: str
    unit: str


class Frame(NamedTuple):
    """One source position of a stack: ``(function_name, filename, line)``."""

    function_name: str
    filename: str
    line: int


class Label(NamedTuple):
    """A sample label with its string-table references resolved.

    ``str`` is the string value (``""`` when the label is numeric), ``num`` the
    numeric value, ``num_unit`` the unit of ``num`` (``""`` when unset) and
    ``is_numeric`` tells which of the two the label carries.
    """

    key: str
    str: str
    num: int
    num_unit: builtins.str  # `str` is the field above here
    is_numeric: bool

    @property
    def value(self) -> LabelValue:
        return self.num if self.is_numeric else self.str


@dataclass
class Function:
    id: int
    name: str
    system_name: str = ""
    filename: str = ""
    start_line: int = 0


@dataclass
class Mapping:
    id: int
    memory_start: int = 0
    memory_limit: int = 0
    file_offset: int = 0
    filename: str = ""
    build_id: str = ""
    has_functions: bool = False
    has_filenames: bool = False
    has_line_numbers: bool = False
    has_inline_frames: bool = False


@dataclass
class Location:
    """A pprof location.  ``lines`` is leaf-most first (inlined callee first)."""

    id: int
    lines: List[Frame] = field(default_factory=list)
    functions: List[Optional[Function]] = field(default_factory=list, repr=False)
    address: int = 0
    mapping: Optional[Mapping] = field(default=None, repr=False)
    is_folded: bool = False

    @property
    def frame(self) -> Optional[Frame]:
        """The leaf-most frame of this location (None if it has no line)."""
        return self.lines[0] if self.lines else None

    @property
    def function_name(self) -> str:
        return self.lines[0].function_name if self.lines else ""

    @property
    def filename(self) -> str:
        return self.lines[0].filename if self.lines else ""

    @property
    def line(self) -> int:
        return self.lines[0].line if self.lines else 0


@dataclass
class Sample:
    """A sample: its stack (leaf first), its values and its labels."""

    locations: List[Location] = field(default_factory=list)
    values: List[int] = field(default_factory=list)
    labels: Dict[str, LabelValue] = field(default_factory=dict)
    label_list: List[Label] = field(default_factory=list, repr=False)

    @property
    def location_ids(self) -> List[int]:
        return [loc.id for loc in self.locations]

    @property
    def frames(self) -> List[Frame]:
        """The stack flattened to frames, leaf first (inlined frames expanded)."""
        out: List[Frame] = []
        for loc in self.locations:
            out.extend(loc.lines)
        return out

    @property
    def leaf(self) -> Optional[Frame]:
        """The innermost frame, or None for an empty stack."""
        for loc in self.locations:
            if loc.lines:
                return loc.lines[0]
        return None


@dataclass
class Profile:
    """A decoded pprof profile with every string-table reference resolved."""

    sample_types: List[ValueType] = field(default_factory=list)
    samples: List[Sample] = field(default_factory=list)
    mappings: List[Mapping] = field(default_factory=list, repr=False)
    locations: Dict[int, Location] = field(default_factory=dict, repr=False)
    functions: Dict[int, Function] = field(default_factory=dict, repr=False)
    string_table: List[str] = field(default_factory=list, repr=False)
    drop_frames: str = ""
    keep_frames: str = ""
    time_nanos: int = 0
    duration_nanos: int = 0
    period_type: Optional[ValueType] = None
    period: int = 0
    comments: List[str] = field(default_factory=list)
    default_sample_type: str = ""
    #: where the profile was read from (a path, or a list of paths once merged)
    path: Optional[Union[str, List[str]]] = None

    def value_index(self, value_type: str) -> int:
        """Index of the sample type named ``value_type`` in ``sample.values``."""
        for i, vt in enumerate(self.sample_types):
            if vt.type == value_type:
                return i
        raise ValueError(
            "profile has no sample type %r (sample types: %s)"
            % (value_type, ", ".join("%s/%s" % vt for vt in self.sample_types) or "none")
        )

    def sample_value(self, sample: Sample, value_type: str) -> int:
        """The value of ``sample`` for the sample type named ``value_type``."""
        i = self.value_index(value_type)
        return sample.values[i] if i < len(sample.values) else 0

    def values_by_type(self, sample: Sample) -> Dict[str, int]:
        """``{sample type name: value}`` for ``sample``."""
        return {vt.type: (sample.values[i] if i < len(sample.values) else 0) for i, vt in enumerate(self.sample_types)}

    def samples_with_value(self, value_type: str) -> List[Sample]:
        """Samples whose value for ``value_type`` is non-zero."""
        i = self.value_index(value_type)
        return [s for s in self.samples if i < len(s.values) and s.values[i] != 0]

    def total(self, value_type: str, samples: Optional[Iterable[Sample]] = None) -> int:
        """Sum of ``value_type`` over ``samples`` (default: all samples)."""
        i = self.value_index(value_type)
        return sum(s.values[i] for s in (self.samples if samples is None else samples) if i < len(s.values))

    def label_values(self, key: str) -> List[LabelValue]:
        """Distinct values of label ``key`` across samples, in first-seen order."""
        seen: Dict[LabelValue, None] = {}
        for s in self.samples:
            if key in s.labels:
                seen.setdefault(s.labels[key], None)
        return list(seen)


# ---------------------------------------------------------------------------
# Wire format
# ---------------------------------------------------------------------------

_VARINT, _FIXED64, _LEN, _SGROUP, _EGROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


def _read_varint(buf: Union[bytes, bytearray], pos: int, end: int) -> Tuple[int, int]:
    """Decode a base-128 varint at ``buf[pos:end]``; return (value, new pos).

    Values wider than 64 bits are truncated to 64 bits, as protobuf does.
    """
    if pos >= end:
        raise DecodeError("truncated varint at offset %d" % pos)
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    result = b & 0x7F
    shift = 7
    while True:
        if pos >= end:
            raise DecodeError("truncated varint at offset %d" % pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & (_U64 - 1), pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes at offset %d" % pos)


def _iter_fields(buf: Union[bytes, bytearray], start: int, end: int) -> Iterator[Tuple[int, int, object]]:
    """Yield ``(field number, wire type, value)`` for each field of a message.

    ``value`` is an int for varint and fixed-width fields and a ``(start, end)``
    pair of offsets into ``buf`` for length-delimited fields.
    """
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number = key >> 3
        wire = key & 7
        if number == 0:
            raise DecodeError("invalid field number 0 at offset %d" % pos)
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield number, wire, value
        elif wire == _LEN:
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise DecodeError(
                    "length-delimited field %d overruns its message (%d bytes at offset %d, %d available)"
                    % (number, length, pos, end - pos)
                )
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == _FIXED64:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64 field %d at offset %d" % (number, pos))
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == _FIXED32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32 field %d at offset %d" % (number, pos))
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            # Groups (3/4) are not used by profile.proto; 6/7 do not exist.
            raise DecodeError("unsupported wire type %d for field %d at offset %d" % (wire, number, pos))


# Field kinds of the schema below.
_K_INT64 = "int64"
_K_UINT64 = "uint64"
_K_BOOL = "bool"
_K_STRING = "string"


def _to_int64(v: int) -> int:
    return v - _U64 if v >= _I64_SIGN else v


_SCALAR_CONVERT: Dict[str, Callable[[int], Union[int, bool]]] = {
    _K_INT64: _to_int64,
    _K_UINT64: int,
    _K_BOOL: bool,
}

# schema: field number -> (attribute name, kind, repeated); kind is a scalar
# kind or a nested schema dict (an embedded message).
_VALUE_TYPE = {1: ("type", _K_INT64, False), 2: ("unit", _K_INT64, False)}
_LABEL = {
    1: ("key", _K_INT64, False),
    2: ("str", _K_INT64, False),
    3: ("num", _K_INT64, False),
    4: ("num_unit", _K_INT64, False),
}
_SAMPLE = {
    1: ("location_id", _K_UINT64, True),
    2: ("value", _K_INT64, True),
    3: ("label", _LABEL, True),
}
_MAPPING = {
    1: ("id", _K_UINT64, False),
    2: ("memory_start", _K_UINT64, False),
    3: ("memory_limit", _K_UINT64, False),
    4: ("file_offset", _K_UINT64, False),
    5: ("filename", _K_INT64, False),
    6: ("build_id", _K_INT64, False),
    7: ("has_functions", _K_BOOL, False),
    8: ("has_filenames", _K_BOOL, False),
    9: ("has_line_numbers", _K_BOOL, False),
    10: ("has_inline_frames", _K_BOOL, False),
}
_LINE = {1: ("function_id", _K_UINT64, False), 2: ("line", _K_INT64, False)}
_LOCATION = {
    1: ("id", _K_UINT64, False),
    2: ("mapping_id", _K_UINT64, False),
    3: ("address", _K_UINT64, False),
    4: ("line", _LINE, True),
    5: ("is_folded", _K_BOOL, False),
}
_FUNCTION = {
    1: ("id", _K_UINT64, False),
    2: ("name", _K_INT64, False),
    3: ("system_name", _K_INT64, False),
    4: ("filename", _K_INT64, False),
    5: ("start_line", _K_INT64, False),
}
_PROFILE = {
    1: ("sample_type", _VALUE_TYPE, True),
    2: ("sample", _SAMPLE, True),
    3: ("mapping", _MAPPING, True),
    4: ("location", _LOCATION, True),
    5: ("function", _FUNCTION, True),
    6: ("string_table", _K_STRING, True),
    7: ("drop_frames", _K_INT64, False),
    8: ("keep_frames", _K_INT64, False),
    9: ("time_nanos", _K_INT64, False),
    10: ("duration_nanos", _K_INT64, False),
    11: ("period_type", _VALUE_TYPE, False),
    12: ("period", _K_INT64, False),
    13: ("comment", _K_INT64, True),
    14: ("default_sample_type", _K_INT64, False),
}

_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}


class _OverBudget(Exception):
    """More repeated items of one kind than the decoding budget allows; the
    argument is the name of the :class:`Limits` field."""


# repeated fields counted while decoding -> the Limits field they count against
_BUDGETED = {"label": "max_labels", "line": "max_frames", "location_id": "max_frames"}


def _spend(budget: Dict[str, int], limit: str, n: int) -> None:
    budget[limit] -= n
    if budget[limit] < 0:
        raise _OverBudget(limit)


def _decode_message(buf: Union[bytes, bytearray], start: int, end: int, schema: dict, where: str,
                    budget: Optional[Dict[str, int]] = None) -> dict:
    """Decode one message into a dict ``{attribute: value}`` following ``schema``.

    Unknown fields are skipped (forward compatibility).  Absent scalars get
    their proto3 default; absent embedded messages are None.  The set of
    attribute names actually present on the wire is stored under ``"_present"``.
    ``budget`` maps the Limits fields of :data:`_BUDGETED` to how many more
    of their items (in this message and those below it) may be decoded:
    _OverBudget past it.
    """
    out: dict = {}
    for name, kind, repeated in schema.values():
        if repeated:
            out[name] = []
        elif isinstance(kind, dict):
            out[name] = None
        elif kind == _K_BOOL:
            out[name] = False
        else:
            out[name] = 0
    present = set()
    for number, wire, value in _iter_fields(buf, start, end):
        spec = schema.get(number)
        if spec is None:
            continue
        name, kind, repeated = spec
        present.add(name)
        if isinstance(kind, dict):
            if wire != _LEN:
                raise DecodeError("%s.%s: expected a message, got wire type %s" % (where, name, _WIRE_NAMES.get(wire, wire)))
            if budget is not None and name in _BUDGETED:
                _spend(budget, _BUDGETED[name], 1)
            sub = _decode_message(buf, value[0], value[1], kind, where + "." + name, budget)  # type: ignore[index]
            if repeated:
                out[name].append(sub)
            else:
                out[name] = sub
        elif kind == _K_STRING:
            if wire != _LEN:
                raise DecodeError("%s.%s: expected a string, got wire type %s" % (where, name, _WIRE_NAMES.get(wire, wire)))
            raw = buf[value[0] : value[1]]  # type: ignore[index]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DecodeError("%s.%s: string is not valid UTF-8: %r (%s)" % (where, name, bytes(raw), e)) from None
            if repeated:
                out[name].append(text)
            else:
                out[name] = text
        else:
            convert = _SCALAR_CONVERT[kind]
            if wire == _VARINT:
                if repeated:
                    if budget is not None and name in _BUDGETED:
                        _spend(budget, _BUDGETED[name], 1)
                    out[name].append(convert(cast(int, value)))
                else:
                    out[name] = convert(cast(int, value))
            elif wire == _LEN and repeated:
                # packed repeated varints
                pos, stop = cast(Tuple[int, int], value)
                items = out[name]
                before = len(items)
                while pos < stop:
                    v, pos = _read_varint(buf, pos, stop)
                    items.append(convert(v))
                if budget is not None and name in _BUDGETED:
                    _spend(budget, _BUDGETED[name], len(items) - before)
            else:
                raise DecodeError(
                    "%s.%s: expected a varint%s, got wire type %s"
                    % (where, name, " or a packed list" if repeated else "", _WIRE_NAMES.get(wire, wire))
                )
    out["_present"] = present
    return out


# ---------------------------------------------------------------------------
# Building the object tree
# ---------------------------------------------------------------------------


def _gunzip_limited(read: Callable[[int], bytes], first: bytes, max_bytes: int, limits: Limits) -> bytearray:
    """Decompress a gzip stream (one or more members) read in chunks, refusing
    to produce more than ``max_bytes``: never holds more than that."""
    out = bytearray()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    buf = first
    try:
        while True:
            if not buf:
                buf = read(_READ_CHUNK)
                if not buf:
                    break
            out += d.decompress(buf, min(max_bytes - len(out) + 1, _INFLATE_STEP))
            if len(out) > max_bytes:
                raise limits.exceeded("max_bytes", "decompressed profile larger")
            buf = d.unconsumed_tail
            if d.eof:
                buf = d.unused_data
                if not buf:
                    buf = read(_READ_CHUNK)
                    if not buf:
                        return out
                if buf[:1] != _GZIP_MAGIC[:1] or (len(buf) > 1 and buf[:2] != _GZIP_MAGIC):
                    raise DecodeError("corrupt gzip data: unexpected bytes after the gzip stream")
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    except zlib.error as e:
        raise DecodeError("corrupt gzip data: %s" % e) from None
    raise DecodeError("corrupt gzip data: compressed data ends before the end of the gzip stream")


def _read_limited(read: Callable[[int], bytes], limits: Limits) -> Union[bytes, bytearray]:
    """The raw protobuf bytes of a stream: gunzipped if it is gzip; at most
    ``limits.max_bytes`` of them, else LimitError."""
    first = read(_READ_CHUNK)
    while len(first) < len(_ZSTD_MAGIC):
        more = read(_READ_CHUNK)
        if not more:
            break
        first += more
    if first[:2] == _GZIP_MAGIC:
        return _gunzip_limited(read, first, limits.max_bytes, limits)
    if first[:4] == _ZSTD_MAGIC:
        raise DecodeError("zstd-compressed profile: only gzip or raw protobuf is supported")
    out = bytearray(first)
    while len(out) <= limits.max_bytes:
        more = read(_READ_CHUNK)
        if not more:
            break
        out += more
    if len(out) > limits.max_bytes:
        raise limits.exceeded("max_bytes", "profile larger")
    return out


def decompress(data: bytes, limits: "Union[Limits, MappingT[str, int], None]" = None) -> bytes:
    """Return the raw protobuf bytes of ``data`` (gunzipped if it is gzip).

    Raises LimitError when they would be more than ``limits.max_bytes``
    (default: :meth:`Limits.from_env`), without decompressing further.
    """
    return bytes(_read_limited(io.BytesIO(data).read, Limits.resolve(limits)))


def _check_counts(buf: Union[bytes, bytearray], limits: Limits) -> None:
    """Refuse, before decoding anything, a profile holding more samples,
    locations, functions or strings than ``limits`` (one cheap pass over the
    top-level fields; malformed data is left to the decoder)."""
    caps = {
        2: ("max_samples", "samples"),
        4: ("max_locations", "locations"),
        5: ("max_functions", "functions"),
        6: ("max_strings", "strings"),
    }
    counts = dict.fromkeys(caps, 0)
    left = {number: getattr(limits, name) for number, (name, _) in caps.items()}
    try:
        for number, _wire, _value in _iter_fields(buf, 0, len(buf)):
            if number in counts:
                counts[number] += 1
                if counts[number] > left[number]:
                    name, what = caps[number]
                    raise limits.exceeded(name, "profile holds more %s" % what)
    except LimitError:
        raise
    except DecodeError:
        return


def parse_bytes(
    data: bytes,
    strict: bool = True,
    path: Optional[str] = None,
    limits: "Union[Limits, MappingT[str, int], None]" = None,
) -> Profile:
    """Decode a pprof profile from gzip-compressed or raw protobuf bytes.

    With ``strict`` (the default) the profile is also checked for the
    invariants pprof consumers rely on, and :class:`DecodeError` is raised on
    the first violation: string table entry 0 is ``""``; string indices are in
    range; location/function/mapping ids are non-zero and unique; every
    referenced id exists; every sample has one value per sample type.
    With ``strict=False`` dangling references resolve to placeholders.

    ``limits`` (a :class:`Limits`, a dict of its fields to change, or None
    for :meth:`Limits.from_env`) bounds what decoding may take:
    :class:`LimitError` past any of them.
    """
    lim = Limits.resolve(limits)
    raw = _read_limited(io.BytesIO(data).read, lim)
    return _parse_raw(raw, strict, path, lim)


def _parse_raw(raw: Union[bytes, bytearray], strict: bool, path: Optional[str], limits: Limits) -> Profile:
    _check_counts(raw, limits)
    budget = {limit: getattr(limits, limit) for limit in set(_BUDGETED.values())}
    try:
        msg = _decode_message(raw, 0, len(raw), _PROFILE, "Profile", budget)
    except _OverBudget as e:
        limit = e.args[0]
        what = "labels" if limit == "max_labels" else "stack frames (sample location ids and location lines)"
        raise limits.exceeded(limit, "profile holds more %s" % what) from None
    return _build_profile(msg, strict, path)


def parse_file(
    path: str, strict: bool = True, limits: "Union[Limits, MappingT[str, int], None]" = None
) -> Profile:
    """Read and decode the pprof file at ``path`` (gzip or raw protobuf).

    The file is read and decompressed in chunks, never past ``limits``
    (see :func:`parse_bytes`); an empty file is a DecodeError (no profile
    writer makes one).  Errors name the file.
    """
    lim = Limits.resolve(limits)
    try:
        with open(path, "rb") as f:
            raw = _read_limited(f.read, lim)
        if not raw and os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes), not a pprof profile")
        return _parse_raw(raw, strict, str(path), lim)
    except DecodeError as e:
        raise type(e)("%s: %s" % (path, e)) from None


def _build_profile(msg: dict, strict: bool, path: Optional[str]) -> Profile:
    strings: List[str] = msg["string_table"]
    if strict and strings and strings[0] != "":
        raise DecodeError("string_table[0] must be the empty string, got %r" % strings[0])

    def s(index: int, what: str) -> str:
        if 0 <= index < len(strings):
            return strings[index]
        if index == 0:  # empty profile without a string table
            return ""
        if strict:
            raise DecodeError("%s: string index %d out of range (string table has %d entries)" % (what, index, len(strings)))
        return "<bad string index %d>" % index

    def check_id(kind: str, ident: int, seen: dict) -> None:
        if not strict:
            return
        if ident == 0:
            raise DecodeError("%s with id 0 (ids must be non-zero)" % kind)
        if ident in seen:
            raise DecodeError("duplicate %s id %d" % (kind, ident))

    mappings: Dict[int, Mapping] = {}
    mapping_list: List[Mapping] = []
    for m in msg["mapping"]:
        check_id("mapping", m["id"], mappings)
        mp = Mapping(
            id=m["id"],
            memory_start=m["memory_start"],
            memory_limit=m["memory_limit"],
            file_offset=m["file_offset"],
            filename=s(m["filename"], "mapping %d filename" % m["id"]),
            build_id=s(m["build_id"], "mapping %d build_id" % m["id"]),
            has_functions=m["has_functions"],
            has_filenames=m["has_filenames"],
            has_line_numbers=m["has_line_numbers"],
            has_inline_frames=m["has_inline_frames"],
        )
        mappings[mp.id] = mp
        mapping_list.append(mp)

    functions: Dict[int, Function] = {}
    for f in msg["function"]:
        check_id("function", f["id"], functions)
        fn = Function(
            id=f["id"],
            name=s(f["name"], "function %d name" % f["id"]),
            system_name=s(f["system_name"], "function %d system_name" % f["id"]),
            filename=s(f["filename"], "function %d filename" % f["id"]),
            start_line=f["start_line"],
        )
        functions[fn.id] = fn

    locations: Dict[int, Location] = {}
    for loc in msg["location"]:
        check_id("location", loc["id"], locations)
        mapping = None
        if loc["mapping_id"]:
            mapping = mappings.get(loc["mapping_id"])
            if mapping is None and strict:
                raise DecodeError("location %d references unknown mapping %d" % (loc["id"], loc["mapping_id"]))
        frames: List[Frame] = []
        fns: List[Optional[Function]] = []
        for ln in loc["line"]:
            line_fn: Optional[Function] = None
            if ln["function_id"]:
                line_fn = functions.get(ln["function_id"])
                if line_fn is None and strict:
                    raise DecodeError("location %d references unknown function %d" % (loc["id"], ln["function_id"]))
            if line_fn is not None:
                frames.append(Frame(line_fn.name, line_fn.filename, ln["line"]))
            elif ln["function_id"]:
                frames.append(Frame("<unknown function %d>" % ln["function_id"], "", ln["line"]))
            else:
                frames.append(Frame("", "", ln["line"]))
            fns.append(line_fn)
        locations[loc["id"]] = Location(
            id=loc["id"],
            lines=frames,
            functions=fns,
            address=loc["address"],
            mapping=mapping,
            is_folded=loc["is_folded"],
        )

    sample_types = [ValueType(s(vt["type"], "sample_type"), s(vt["unit"], "sample_type unit")) for vt in msg["sample_type"]]

    samples: List[Sample] = []
    for n, sm in enumerate(msg["sample"]):
        if strict and len(sm["value"]) != len(sample_types):
            raise DecodeError(
                "sample %d has %d values but the profile has %d sample types" % (n, len(sm["value"]), len(sample_types))
            )
        locs: List[Location] = []
        for lid in sm["location_id"]:
            location = locations.get(lid)
            if location is None:
                if strict:
                    raise DecodeError("sample %d references unknown location %d" % (n, lid))
                location = Location(id=lid, lines=[Frame("<unknown location %d>" % lid, "", 0)], functions=[None])
            locs.append(location)
        label_list: List[Label] = []
        labels: Dict[str, LabelValue] = {}
        for lb in sm["label"]:
            key = s(lb["key"], "sample %d label key" % n)
            # A label carries either a string or a number.  proto3 omits zero
            # values, so an empty-string label looks like num=0 unless the
            # encoder wrote the str field explicitly.
            is_numeric = not (lb["str"] != 0 or ("str" in lb["_present"] and "num" not in lb["_present"]))
            label = Label(
                key=key,
                str="" if is_numeric else s(lb["str"], "sample %d label %r value" % (n, key)),
                num=lb["num"],
                num_unit=s(lb["num_unit"], "sample %d label %r unit" % (n, key)),
                is_numeric=is_numeric,
            )
            label_list.append(label)
            labels[key] = label.value
        samples.append(Sample(locations=locs, values=list(sm["value"]), labels=labels, label_list=label_list))

    period_type = None
    if msg["period_type"] is not None:
        pt = msg["period_type"]
        period_type = ValueType(s(pt["type"], "period_type"), s(pt["unit"], "period_type unit"))

    return Profile(
        sample_types=sample_types,
        samples=samples,
        mappings=mapping_list,
        locations=locations,
        functions=functions,
        string_table=list(strings),
        drop_frames=s(msg["drop_frames"], "drop_frames"),
        keep_frames=s(msg["keep_frames"], "keep_frames"),
        time_nanos=msg["time_nanos"],
        duration_nanos=msg["duration_nanos"],
        period_type=period_type,
        period=msg["period"],
        comments=[s(c, "comment") for c in msg["comment"]],
        default_sample_type=s(msg["default_sample_type"], "default_sample_type"),
        path=path,
    )


# ---------------------------------------------------------------------------
# Merging and aggregation
# ---------------------------------------------------------------------------


class _Interner:
    """Rebuilds a consistent id space (strings, functions, locations, mappings)."""

    def __init__(self) -> None:
        self.strings: Dict[str, int] = {"": 0}
        self.functions: Dict[tuple, Function] = {}
        self.mappings: Dict[tuple, Mapping] = {}
        self.locations: Dict[tuple, Location] = {}

    def string(self, text: str) -> str:
        self.strings.setdefault(text, len(self.strings))
        return text

    def function(self, fn: Optional[Function]) -> Optional[Function]:
        if fn is None:
            return None
        key = (fn.name, fn.system_name, fn.filename, fn.start_line)
        out = self.functions.get(key)
        if out is None:
            for text in key[:3]:
                self.string(text)
            out = Function(len(self.functions) + 1, fn.name, fn.system_name, fn.filename, fn.start_line)
            self.functions[key] = out
        return out

    def mapping(self, mp: Optional[Mapping]) -> Optional[Mapping]:
        if mp is None:
            return None
        key = (
            mp.memory_start,
            mp.memory_limit,
            mp.file_offset,
            mp.filename,
            mp.build_id,
            mp.has_functions,
            mp.has_filenames,
            mp.has_line_numbers,
            mp.has_inline_frames,
        )
        out = self.mappings.get(key)
        if out is None:
            self.string(mp.filename)
            self.string(mp.build_id)
            out = Mapping(len(self.mappings) + 1, *key)
            self.mappings[key] = out
        return out

    def location(self, loc: Location) -> Location:
        fns = [self.function(fn) for fn in loc.functions]
        for fr in loc.lines:
            self.string(fr.function_name)
            self.string(fr.filename)
        mapping = self.mapping(loc.mapping)
        key = (
            tuple(loc.lines),
            tuple(id(f) for f in fns),
            loc.address,
            id(mapping) if mapping is not None else None,
            loc.is_folded,
        )
        out = self.locations.get(key)
        if out is None:
            out = Location(len(self.locations) + 1, list(loc.lines), fns, loc.address, mapping, loc.is_folded)
            self.locations[key] = out
        return out

    def sample(self, sm: Sample, values: Optional[List[int]] = None) -> Sample:
        for lb in sm.label_list:
            self.string(lb.key)
            self.string(lb.str)
            self.string(lb.num_unit)
        return Sample(
            locations=[self.location(loc) for loc in sm.locations],
            values=list(sm.values if values is None else values),
            labels=dict(sm.labels),
            label_list=list(sm.label_list),
        )

    def finish(self, template: Profile, samples: List[Sample]) -> Profile:
        for vt in template.sample_types:
            self.string(vt.type)
            self.string(vt.unit)
        if template.period_type is not None:
            self.string(template.period_type.type)
            self.string(template.period_type.unit)
        for text in template.comments + [template.drop_frames, template.keep_frames, template.default_sample_type]:
            self.string(text)
        return Profile(
            sample_types=list(template.sample_types),
            samples=samples,
            mappings=list(self.mappings.values()),
            locations={loc.id: loc for loc in self.locations.values()},
            functions={fn.id: fn for fn in self.functions.values()},
            string_table=list(self.strings),
            drop_frames=template.drop_frames,
            keep_frames=template.keep_frames,
            time_nanos=template.time_nanos,
            duration_nanos=template.duration_nanos,
            period_type=template.period_type,
            period=template.period,
            comments=list(template.comments),
            default_sample_type=template.default_sample_type,
            path=template.path,
        )


def merge(profiles: Iterable[Profile]) -> Profile:
    """Concatenate the samples of ``profiles`` into one profile.

    All profiles must have the same sample types (an empty profile without
    sample types is accepted and adopts them).  Functions, locations and
    mappings are re-interned into one id space; ``time_nanos`` is the earliest
    start, ``duration_nanos`` spans to the latest end; comments are
    concatenated; ``path`` becomes the list of source paths.  Samples are not
    summed: use :func:`aggregate` for that.
    """
    profiles = list(profiles)
    sample_types: List[ValueType] = []
    for p in profiles:
        if not p.sample_types:
            if p.samples:
                raise ValueError("cannot merge a profile that has samples but no sample types")
            continue
        if not sample_types:
            sample_types = list(p.sample_types)
        elif list(p.sample_types) != sample_types:
            raise ValueError("cannot merge profiles with different sample types: %s vs %s" % (sample_types, p.sample_types))
    interner = _Interner()
    samples = [interner.sample(sm) for p in profiles for sm in p.samples]
    timed = [p for p in profiles if p.time_nanos or p.duration_nanos]
    start = min((p.time_nanos for p in timed), default=0)
    end = max((p.time_nanos + p.duration_nanos for p in timed), default=0)
    paths: List[str] = []
    for p in profiles:
        if isinstance(p.path, list):
            paths.extend(p.path)
        elif p.path is not None:
            paths.append(p.path)
    first = profiles[0] if profiles else Profile()
    template = Profile(
        sample_types=sample_types,
        time_nanos=start,
        duration_nanos=end - start,
        period_type=first.period_type,
        period=first.period,
        comments=[c for p in profiles for c in p.comments],
        drop_frames=first.drop_frames,
        keep_frames=first.keep_frames,
        default_sample_type=first.default_sample_type,
        path=paths,
    )
    return interner.finish(template, samples)


def _sample_key(sm: Sample) -> tuple:
    return (
        tuple(tuple(loc.lines) + (loc.address, loc.is_folded) for loc in sm.locations),
        tuple(sorted((lb.key, lb.is_numeric, lb.str, lb.num, lb.num_unit) for lb in sm.label_list)),
    )


def aggregate(profile: Profile) -> Profile:
    """Return a copy of ``profile`` where samples with the same stack (frames)
    and the same labels are summed into one, in first-seen order."""
    totals: Dict[tuple, Tuple[Sample, List[int]]] = {}
    for sm in profile.samples:
        key = _sample_key(sm)
        entry = totals.get(key)
        if entry is None:
            totals[key] = (sm, list(sm.values))
        else:
            acc = entry[1]
            if len(acc) < len(sm.values):
                acc.extend([0] * (len(sm.values) - len(acc)))
            for i, v in enumerate(sm.values):
                acc[i] += v
    interner = _Interner()
    samples = [interner.sample(sm, values) for sm, values in totals.values()]
    return interner.finish(profile, samples)


# ---------------------------------------------------------------------------
# Human-readable dumps
# ---------------------------------------------------------------------------


def format_frame(frame: Optional[Frame]) -> str:
    if frame is None:
        return "<empty stack>"
    return "%s (%s:%d)" % (frame.function_name or "?", frame.filename or "?", frame.line)


def format_sample(profile: Profile, sample: Sample, max_frames: int = 4, indent: str = "") -> str:
    """Describe a sample on a few lines: values, labels, then its stack."""
    values = ", ".join("%s=%d" % (k, v) for k, v in profile.values_by_type(sample).items())
    labels = ", ".join("%r: %r" % (lb.key, lb.value) for lb in sample.label_list)
    lines = ["%svalues {%s} labels {%s}" % (indent, values, labels)]
    frames = sample.frames
    for fr in frames[:max_frames]:
        lines.append("%s    at %s" % (indent, format_frame(fr)))
    if len(frames) > max_frames:
        lines.append("%s    ... %d more frame(s)" % (indent, len(frames) - max_frames))
    if not frames:
        lines.append("%s    <empty stack>" % indent)
    return "\n".join(lines)


def format_profile(profile: Profile, max_samples: Optional[int] = None, max_frames: int = 8) -> str:
    """A multi-line, human-readable dump of ``profile``."""
    out = []
    if profile.path:
        out.append("path: %s" % (", ".join(profile.path) if isinstance(profile.path, list) else profile.path))
    out.append("sample types: %s" % (", ".join("%s/%s" % vt for vt in profile.sample_types) or "none"))
    out.append("time_nanos: %d  duration_nanos: %d" % (profile.time_nanos, profile.duration_nanos))
    if profile.period_type is not None or profile.period:
        pt = "%s/%s" % profile.period_type if profile.period_type is not None else "-"
        out.append("period: %d %s" % (profile.period, pt))
    for c in profile.comments:
        out.append("comment: %s" % c)
    out.append("samples: %d" % len(profile.samples))
    shown = profile.samples if max_samples is None else profile.samples[:max_samples]
    for i, sm in enumerate(shown):
        out.append("#%d %s" % (i, format_sample(profile, sm, max_frames=max_frames).lstrip()))
    if len(shown) < len(profile.samples):
        out.append("... %d more sample(s)" % (len(profile.samples) - len(shown)))
    return "\n".join(out)
