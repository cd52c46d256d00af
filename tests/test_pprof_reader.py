"""Tests for ddlock._pprof, the pure-Python pprof reader.

The reference bytes come from an independent encoder, the real ``protoc``:
each case in CASES is a text-format message that
``protoc --encode=perftools.profiles.<Message> -I <dir> <dir>/profile.proto``
turns into the bytes embedded in ENCODED.  The decoding tests use the
embedded bytes, so they run everywhere;
test_embedded_bytes_are_what_protoc_writes re-encodes every case with protoc
(when installed) and checks the embedded bytes are exactly its output.
After changing a case, regenerate ENCODED with
``python tests/test_pprof_reader.py``.

Besides ext/proto/profile.proto itself, some cases use variants of it with
the same field numbers: ``unpacked`` ([packed = false] on every repeated
scalar), ``extended`` (extra fields of every wire type, which the reader
must skip) and ``proto2`` (field presence, so a zero string index can be
written explicitly).
"""

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from ddlock import _pprof
from ddlock._pprof import DecodeError, Frame, ValueType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "ext", "proto")
PROTOC = shutil.which("protoc")


def unpacked(src):
    """profile.proto with every repeated scalar field marked [packed = false]."""
    new, n = re.subn(r"(repeated\s+u?int64\s+\w+\s*=\s*\d+)\s*;", r"\1 [packed = false];", src)
    assert n == 3  # Sample.location_id, Sample.value, Profile.comment
    return new


def extended(src):
    """profile.proto plus unknown fields of every wire type."""
    src = src.replace(
        "message Profile {",
        "message Profile {\n  fixed64 x_f64 = 100;\n  fixed32 x_f32 = 101;\n  string x_str = 102;\n"
        "  ValueType x_msg = 103;\n  repeated sint64 x_packed = 104;\n  uint64 x_big = 536870911;\n",
        1,
    )
    return src.replace("message Sample {", "message Sample {\n  string x_note = 50;\n  double x_d = 51;\n", 1)


def proto2(src):
    """profile.proto as proto2 (explicit presence: zero values can be written)."""
    src = src.replace('syntax = "proto3";', 'syntax = "proto2";')
    return re.sub(r"^(\s+)(u?int64|bool|ValueType|string)(\s)", r"\1optional \2\3", src, flags=re.M)


VARIANTS = {"profile": None, "unpacked": unpacked, "extended": extended, "proto2": proto2}


def protoc_encode(text, variant="profile", message="Profile"):
    """Encode a text-format message with the real protoc."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(PROTO_DIR, "profile.proto")) as f:
            src = f.read()
        transform = VARIANTS[variant]
        with open(os.path.join(tmp, "profile.proto"), "w") as f:
            f.write(transform(src) if transform else src)
        proc = subprocess.run(
            [PROTOC, "--encode=perftools.profiles." + message, "-I", tmp, os.path.join(tmp, "profile.proto")],
            input=text.encode(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


CASES = {}  # name -> (variant, message, text)


def case(name, text, variant="profile", message="Profile"):
    CASES[name] = (variant, message, text)
    return name


def encoded(name):
    return bytes.fromhex(ENCODED[name])


# A profile exercising every message and field of profile.proto.
STRINGS = [
    "",  # 0
    "lock-acquire",  # 1
    "count",  # 2
    "lock-acquire-wait",  # 3
    "nanoseconds",  # 4
    "lock-release",  # 5
    "lock-release-hold",  # 6
    "lock name",  # 7
    "test_x.py:12:lock",  # 8
    "thread id",  # 9
    "thread name",  # 10
    "MainThread",  # 11
    "TestX.test_y",  # 12
    "/src/test_x.py",  # 13
    "helper",  # 14
    "<module>",  # 15
    "first comment",  # 16
    "second comment",  # 17
    "wall",  # 18
    "/usr/lib/libpython.so",  # 19
    "build-123",  # 20
    "drop.*",  # 21
    "keep.*",  # 22
    "bytes",  # 23
    "sys_helper",  # 24
    "h\u00e9llo \u2603",  # 25 (non-ASCII)
]

GOLDEN_TEXT = (
    """
sample_type { type: 1 unit: 2 }
sample_type { type: 3 unit: 4 }
sample_type { type: 5 unit: 2 }
sample_type { type: 6 unit: 4 }
sample {
  location_id: [1, 2, 3]
  value: [1, 1500, 0, 0]
  label { key: 7 str: 8 }
  label { key: 9 num: 140234567 }
  label { key: 10 str: 11 }
}
sample {
  location_id: [2]
  value: [0, 0, 2, -7]
  label { key: 9 num: -42 num_unit: 23 }
  label { key: 7 str: 25 }
}
sample { value: [0, 0, 0, 0] }
mapping {
  id: 1 memory_start: 4096 memory_limit: 8192 file_offset: 16 filename: 19 build_id: 20
  has_functions: true has_filenames: true has_line_numbers: true has_inline_frames: true
}
location { id: 1 line { function_id: 1 line: 13 } }
location { id: 2 mapping_id: 1 address: 18446744073709551615 line { function_id: 2 line: 40 } line { function_id: 1 line: 7 } }
location { id: 3 is_folded: true line { function_id: 3 line: 1 } }
function { id: 1 name: 12 filename: 13 start_line: 10 }
function { id: 2 name: 14 system_name: 24 filename: 13 start_line: -3 }
function { id: 3 name: 15 filename: 13 }
drop_frames: 21
keep_frames: 22
time_nanos: 1700000000123456789
duration_nanos: 60000000000
period_type { type: 18 unit: 4 }
period: 10000000
comment: [16, 17]
default_sample_type: 1
"""
    + "".join('string_table: "%s"\n' % "".join(
        chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else "\\%03o" % b for b in s.encode("utf-8")
    ) for s in STRINGS)
)

case("golden", GOLDEN_TEXT)
case("golden_unpacked", GOLDEN_TEXT, variant="unpacked")
case("two_samples", 'sample_type { type: 1 unit: 1 }\nsample { value: [5, 6] }\nstring_table: ""\nstring_table: "t"\n')
case("sample_packed", "value: [1, 2]", message="Sample")
case("sample_unpacked", "value: [7, -8]", variant="unpacked", message="Sample")
case(
    "negative",
    """
sample_type { type: 1 unit: 1 }
sample { value: [-1, -9223372036854775808, 9223372036854775807] label { key: 1 num: -1 } }
time_nanos: -5
duration_nanos: -9223372036854775808
string_table: ""
string_table: "v"
""",
)
case("empty", "")
case("only_string_table", 'string_table: ""')
case(
    "unknown_fields",
    """
x_f64: 1234567890123
x_f32: 77
x_str: "ignored"
x_msg { type: 99 unit: 98 }
x_packed: [-1, 2, -3]
x_big: 18446744073709551615
sample_type { type: 1 unit: 1 }
sample { value: [3] x_note: "n" x_d: 2.5 label { key: 1 str: 1 } }
string_table: ""
string_table: "k"
""",
    variant="extended",
)
case(
    "explicit_empty_string_label",
    """
sample_type { type: 1 unit: 1 }
sample { value: 1 label { key: 1 str: 0 } label { key: 2 num: 0 } }
string_table: ""
string_table: "a"
string_table: "b"
""",
    variant="proto2",
)
_BASE = 'sample_type { type: 1 unit: 1 }\nstring_table: ""\nstring_table: "x"\n'
STRICT_CASES = [
    (case("bad_string_index", 'sample_type { type: 5 unit: 1 }\nstring_table: ""\n'), "string index 5 out of range"),
    (case("bad_string_zero", 'string_table: "oops"\n'), r"string_table\[0\] must be the empty string"),
    (case("bad_location_ref", _BASE + "sample { location_id: [9] value: [1] }"), "unknown location 9"),
    (case("bad_value_count", _BASE + "sample { value: [1, 2] }"), "sample 0 has 2 values but the profile has 1 sample types"),
    (case("bad_function_ref", _BASE + "location { id: 1 line { function_id: 4 } }"), "unknown function 4"),
    (case("bad_mapping_ref", _BASE + "location { id: 1 mapping_id: 2 }"), "unknown mapping 2"),
    (case("duplicate_location", _BASE + "location { id: 1 }\nlocation { id: 1 }"), "duplicate location id 1"),
    (case("zero_function_id", _BASE + "function { id: 0 name: 1 }"), "function with id 0"),
]
case("dangling_refs", _BASE + "sample { location_id: [9] value: [1] label { key: 7 str: 1 } }")

ENCODED = {  # generated by `python tests/test_pprof_reader.py` (protoc 3.21.12)
    'bad_function_ref': (
        "0a040801100122060801220208043200320178"
    ),
    'bad_location_ref': (
        "0a040801100112060a01091201013200320178"
    ),
    'bad_mapping_ref': (
        "0a04080110012204080110023200320178"
    ),
    'bad_string_index': (
        "0a04080510013200"
    ),
    'bad_string_zero': (
        "32046f6f7073"
    ),
    'bad_value_count': (
        "0a04080110011204120201023200320178"
    ),
    'dangling_refs': (
        "0a0408011001120c0a01091201011a04080710013200320178"
    ),
    'duplicate_location': (
        "0a040801100122020801220208013200320178"
    ),
    'empty': (
        ""
    ),
    'explicit_empty_string_label': (
        "0a0408011001120e10011a04080110001a04080218003200320161320162"
    ),
    'golden': (
        "0a04080110020a04080310040a04080510020a040806100412210a03010203120501dc0b00001a04080710081a070809"
        "18c79eef421a04080a100b12290a0102120d000002f9ffffffffffffffff011a0f080918d6ffffffffffffffff012017"
        "1a040807101912061204000000001a16080110802018804020102813301438014001480150012208080122040801100d"
        "221b0802100118ffffffffffffffffff01220408021028220408011007220a080322040803100128012a080801100c20"
        "0d280a2a130802100e1818200d28fdffffffffffffffff012a060803100f200d3200320c6c6f636b2d61637175697265"
        "3205636f756e7432116c6f636b2d616371756972652d77616974320b6e616e6f7365636f6e6473320c6c6f636b2d7265"
        "6c6561736532116c6f636b2d72656c656173652d686f6c6432096c6f636b206e616d653211746573745f782e70793a31"
        "323a6c6f636b3209746872656164206964320b746872656164206e616d65320a4d61696e546872656164320c54657374"
        "582e746573745f79320e2f7372632f746573745f782e7079320668656c70657232083c6d6f64756c653e320d66697273"
        "7420636f6d6d656e74320e7365636f6e6420636f6d6d656e74320477616c6c32152f7573722f6c69622f6c6962707974"
        "686f6e2e736f32096275696c642d313233320664726f702e2a32066b6565702e2a32056279746573320a7379735f6865"
        "6c706572320a68c3a96c6c6f20e298833815401648959a97ece39fe7cb175080b09dc2df015a04081210046080ade204"
        "6a0210117001"
    ),
    'golden_unpacked': (
        "0a04080110020a04080310040a04080510020a04080610041224080108020803100110dc0b100010001a04080710081a"
        "07080918c79eef421a04080a100b122a080210001000100210f9ffffffffffffffff011a0f080918d6ffffffffffffff"
        "ff0120171a0408071019120810001000100010001a160801108020188040201028133014380140014801500122080801"
        "22040801100d221b0802100118ffffffffffffffffff01220408021028220408011007220a080322040803100128012a"
        "080801100c200d280a2a130802100e1818200d28fdffffffffffffffff012a060803100f200d3200320c6c6f636b2d61"
        "6371756972653205636f756e7432116c6f636b2d616371756972652d77616974320b6e616e6f7365636f6e6473320c6c"
        "6f636b2d72656c6561736532116c6f636b2d72656c656173652d686f6c6432096c6f636b206e616d653211746573745f"
        "782e70793a31323a6c6f636b3209746872656164206964320b746872656164206e616d65320a4d61696e546872656164"
        "320c54657374582e746573745f79320e2f7372632f746573745f782e7079320668656c70657232083c6d6f64756c653e"
        "320d666972737420636f6d6d656e74320e7365636f6e6420636f6d6d656e74320477616c6c32152f7573722f6c69622f"
        "6c6962707974686f6e2e736f32096275696c642d313233320664726f702e2a32066b6565702e2a32056279746573320a"
        "7379735f68656c706572320a68c3a96c6c6f20e298833815401648959a97ece39fe7cb175080b09dc2df015a04081210"
        "046080ade204681068117001"
    ),
    'negative': (
        "0a0408011001122e121dffffffffffffffffff0180808080808080808001ffffffffffffffff7f1a0d080118ffffffff"
        "ffffffffff01320032017648fbffffffffffffffff015080808080808080808001"
    ),
    'only_string_table': (
        "3200"
    ),
    'sample_packed': (
        "12020102"
    ),
    'sample_unpacked': (
        "100710f8ffffffffffffffff01"
    ),
    'two_samples': (
        "0a04080110011204120205063200320174"
    ),
    'unknown_fields': (
        "0a040801100112171201031a04080110019203016e99030000000000000440320032016ba106cb04fb711f010000ad06"
        "4d000000b2060769676e6f726564ba060408631062c20603010405f8ffffff0fffffffffffffffffff01"
    ),
    'zero_function_id': (
        "0a04080110012a0210013200320178"
    ),
}


def check_golden(p):
    assert p.sample_types == [
        ("lock-acquire", "count"),
        ("lock-acquire-wait", "nanoseconds"),
        ("lock-release", "count"),
        ("lock-release-hold", "nanoseconds"),
    ]
    assert p.sample_types[0] == ValueType(type="lock-acquire", unit="count")
    assert p.string_table == STRINGS
    assert p.time_nanos == 1700000000123456789
    assert p.duration_nanos == 60000000000
    assert p.period == 10000000
    assert p.period_type == ("wall", "nanoseconds")
    assert p.comments == ["first comment", "second comment"]
    assert p.default_sample_type == "lock-acquire"
    assert p.drop_frames == "drop.*"
    assert p.keep_frames == "keep.*"

    assert len(p.mappings) == 1
    m = p.mappings[0]
    assert (m.id, m.memory_start, m.memory_limit, m.file_offset) == (1, 4096, 8192, 16)
    assert (m.filename, m.build_id) == ("/usr/lib/libpython.so", "build-123")
    assert m.has_functions and m.has_filenames and m.has_line_numbers and m.has_inline_frames

    assert sorted(p.functions) == [1, 2, 3]
    f2 = p.functions[2]
    assert (f2.name, f2.system_name, f2.filename, f2.start_line) == ("helper", "sys_helper", "/src/test_x.py", -3)
    assert p.functions[1].start_line == 10

    assert sorted(p.locations) == [1, 2, 3]
    loc2 = p.locations[2]
    assert loc2.address == 2**64 - 1  # uint64, not sign-folded
    assert loc2.mapping is m
    assert loc2.lines == [Frame("helper", "/src/test_x.py", 40), Frame("TestX.test_y", "/src/test_x.py", 7)]
    assert loc2.frame == Frame("helper", "/src/test_x.py", 40)
    assert p.locations[3].is_folded and not loc2.is_folded

    assert len(p.samples) == 3
    s0, s1, s2 = p.samples
    assert s0.location_ids == [1, 2, 3]
    assert s0.values == [1, 1500, 0, 0]
    assert s0.labels == {"lock name": "test_x.py:12:lock", "thread id": 140234567, "thread name": "MainThread"}
    assert s0.leaf == Frame("TestX.test_y", "/src/test_x.py", 13)
    assert s0.leaf == ("TestX.test_y", "/src/test_x.py", 13)
    assert s0.leaf.function_name == "TestX.test_y" and s0.leaf.line == 13
    # inlined frames are expanded in order, leaf first
    assert [f.function_name for f in s0.frames] == ["TestX.test_y", "helper", "TestX.test_y", "<module>"]
    assert s0.locations[0] is p.locations[1]

    assert s1.values == [0, 0, 2, -7]
    assert s1.labels == {"thread id": -42, "lock name": "h\u00e9llo \u2603"}
    num = [lb for lb in s1.label_list if lb.key == "thread id"][0]
    assert num.is_numeric and num.num == -42 and num.num_unit == "bytes" and num.value == -42
    text = [lb for lb in s1.label_list if lb.key == "lock name"][0]
    assert not text.is_numeric and text.str == "h\u00e9llo \u2603"

    assert s2.locations == [] and s2.values == [0, 0, 0, 0] and s2.labels == {} and s2.leaf is None

    assert p.value_index("lock-release") == 2
    assert p.sample_value(s1, "lock-release-hold") == -7
    assert p.samples_with_value("lock-acquire") == [s0]
    assert p.total("lock-release") == 2
    assert p.label_values("lock name") == ["test_x.py:12:lock", "h\u00e9llo \u2603"]
    with pytest.raises(ValueError, match="no sample type 'cpu'.*lock-acquire/count"):
        p.value_index("cpu")


def test_every_case_has_embedded_bytes():
    assert sorted(ENCODED) == sorted(CASES), "run `python tests/test_pprof_reader.py` to regenerate ENCODED"


@pytest.mark.skipif(PROTOC is None, reason="protoc is not installed (apt: protobuf-compiler)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_embedded_bytes_are_what_protoc_writes(name):
    variant, message, text = CASES[name]
    assert protoc_encode(text, variant, message).hex() == ENCODED[name]


def test_golden_profile():
    check_golden(_pprof.parse_bytes(encoded("golden")))


def test_golden_gzip_and_file(tmp_path):
    data = encoded("golden")
    raw = _pprof.parse_bytes(data)
    gz = gzip.compress(data)
    assert gz[:2] == b"\x1f\x8b"
    assert _pprof.parse_bytes(gz) == raw
    path = tmp_path / "x.1.1.pprof"
    path.write_bytes(gz)
    p = _pprof.parse_file(str(path))
    check_golden(p)
    assert p.path == str(path)
    (tmp_path / "raw.pb").write_bytes(data)
    assert _pprof.parse_file(str(tmp_path / "raw.pb")).samples == raw.samples


def test_packed_and_unpacked_repeated_fields_decode_the_same():
    packed, unpacked_bytes = encoded("golden"), encoded("golden_unpacked")
    assert unpacked_bytes != packed
    # packed: Sample.location_id is one length-delimited field (tag 0x0a, 3 ids)
    assert bytes.fromhex("0a03010203") in packed
    # unpacked: one varint field per id (tag 0x08)
    assert bytes.fromhex("080108020803") in unpacked_bytes
    p = _pprof.parse_bytes(unpacked_bytes)
    check_golden(p)
    assert p == _pprof.parse_bytes(packed)


def test_mixed_packed_and_unpacked_occurrences_concatenate():
    # A repeated field may arrive in several packed and unpacked chunks.
    head = encoded("two_samples")
    extra = encoded("sample_unpacked")
    assert extra == bytes.fromhex("100710f8ffffffffffffffff01")  # two unpacked varint fields
    # a second Sample (Profile field 2, length-delimited) appended by hand
    p = _pprof.parse_bytes(head + bytes([0x12, len(extra)]) + extra, strict=False)
    assert [s.values for s in p.samples] == [[5, 6], [7, -8]]
    # one Sample made of a packed chunk followed by unpacked values
    both = encoded("sample_packed") + extra
    sample_type = encoded("two_samples")[:6]
    assert sample_type == bytes.fromhex("0a0408011001")
    p = _pprof.parse_bytes(sample_type + bytes([0x12, len(both)]) + both + b"\x32\x00\x32\x01t", strict=False)
    assert p.samples[0].values == [1, 2, 7, -8]


def test_negative_int64_uses_ten_byte_varints():
    data = encoded("negative")
    assert bytes.fromhex("ffffffffffffffffff01") in data  # -1 as a 10-byte varint
    p = _pprof.parse_bytes(data, strict=False)
    assert p.samples[0].values == [-1, -(2**63), 2**63 - 1]
    assert p.samples[0].labels == {"v": -1}
    assert p.time_nanos == -5
    assert p.duration_nanos == -(2**63)


def test_empty_profile():
    data = encoded("empty")
    assert data == b""
    for blob in (data, gzip.compress(data)):
        p = _pprof.parse_bytes(blob)
        assert p.samples == [] and p.sample_types == [] and p.string_table == []
        assert p.comments == [] and p.time_nanos == 0 and p.period_type is None
        assert p.default_sample_type == "" and p.drop_frames == ""
    assert "samples: 0" in _pprof.format_profile(_pprof.parse_bytes(data))


def test_minimal_profile_only_string_table():
    p = _pprof.parse_bytes(encoded("only_string_table"))
    assert p.string_table == [""] and p.samples == []


def test_unknown_fields_of_every_wire_type_are_skipped():
    data = encoded("unknown_fields")
    fields = {(number, wire) for number, wire, _ in _pprof._iter_fields(data, 0, len(data))}
    # fixed64, fixed32, string, message, packed sint64, varint with a 5-byte key
    assert {(100, 1), (101, 5), (102, 2), (103, 2), (104, 2), (536870911, 0)} <= fields
    p = _pprof.parse_bytes(data)
    assert p.sample_types == [("k", "k")]
    assert p.samples[0].values == [3]
    assert p.samples[0].labels == {"k": "k"}


@pytest.mark.parametrize("name,message", STRICT_CASES, ids=[n for n, _ in STRICT_CASES])
def test_strict_checks(name, message):
    data = encoded(name)
    with pytest.raises(DecodeError, match=message):
        _pprof.parse_bytes(data)
    _pprof.parse_bytes(data, strict=False)  # lenient mode resolves placeholders


def test_lenient_placeholders():
    p = _pprof.parse_bytes(encoded("dangling_refs"), strict=False)
    assert p.samples[0].leaf.function_name == "<unknown location 9>"
    assert p.samples[0].labels == {"<bad string index 7>": "x"}


def test_empty_string_label_written_explicitly_stays_a_string():
    # proto3 cannot express "str: 0"; an encoder that always writes the field can.
    p = _pprof.parse_bytes(encoded("explicit_empty_string_label"))
    assert p.samples[0].labels == {"a": "", "b": 0}


def test_varint_decoding():
    cases = [
        (b"\x00", 0),
        (b"\x01", 1),
        (b"\x7f", 127),
        (b"\x80\x01", 128),
        (b"\xac\x02", 300),
        (b"\xff\xff\xff\xff\x0f", 2**32 - 1),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 2**64 - 1),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 2**64 - 1),  # overlong: truncated to 64 bits
    ]
    for data, value in cases:
        assert _pprof._read_varint(data + b"\x05", 0, len(data) + 1) == (value, len(data))
    with pytest.raises(DecodeError, match="truncated varint"):
        _pprof._read_varint(b"\x80\x80", 0, 2)
    with pytest.raises(DecodeError, match="longer than 10 bytes"):
        _pprof._read_varint(b"\x80" * 11 + b"\x01", 0, 12)


def test_malformed_input():
    bad = [
        (b"\x0a", "truncated varint"),  # tag, no length
        (b"\x0a\x05\x08", "overruns"),  # length past the end
        (b"\x0b", "unsupported wire type 3"),  # group start
        (b"\x00\x00", "invalid field number 0"),
        (b"\x09\x01\x02", "truncated fixed64"),
        (b"\x0d\x01", "truncated fixed32"),
        (b"\x08\x01", "expected a message"),  # sample_type as a varint
        (b"\x32\x02\xff\xfe", "not valid UTF-8"),  # string_table entry
        (b"\x48" , "truncated varint"),  # time_nanos without value
        (b"\x4a\x01\x01", "expected a varint, got wire type length-delimited"),  # packed non-repeated
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (b"\x28\xb5\x2f\xfd\x00", "zstd"),
    ]
    for data, message in bad:
        with pytest.raises(DecodeError, match=message):
            _pprof.parse_bytes(data)
    with pytest.raises(DecodeError, match="corrupt gzip"):
        _pprof.parse_bytes(gzip.compress(b"\x0a\x04\x08\x01\x10\x02")[:-6])


def test_decode_error_names_the_file(tmp_path):
    path = tmp_path / "bad.pprof"
    path.write_bytes(b"\x0b")
    with pytest.raises(DecodeError) as info:
        _pprof.parse_file(str(path))
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def _two_profiles():
    a = _pprof.Profile(sample_types=[ValueType("lock-acquire", "count")], time_nanos=100, duration_nanos=50, path="a")
    b = _pprof.Profile(sample_types=[ValueType("lock-acquire", "count")], time_nanos=120, duration_nanos=100, path="b")
    fa = _pprof.Function(7, "f", "", "x.py", 1)
    fb = _pprof.Function(1, "f", "", "x.py", 1)
    la = _pprof.Location(3, [Frame("f", "x.py", 2)], [fa])
    lb = _pprof.Location(1, [Frame("f", "x.py", 2)], [fb])
    lc = _pprof.Location(2, [Frame("g", "x.py", 9)], [_pprof.Function(2, "g", "", "x.py", 8)])
    lab = [_pprof.Label("lock name", "x.py:1:l", 0, "", False)]
    a.samples = [_pprof.Sample([la], [1], {"lock name": "x.py:1:l"}, lab)]
    b.samples = [
        _pprof.Sample([lb], [2], {"lock name": "x.py:1:l"}, lab),
        _pprof.Sample([lc, lb], [5], {}, []),
    ]
    a.locations, b.locations = {3: la}, {1: lb, 2: lc}
    a.comments, b.comments = ["ca"], ["cb"]
    return a, b


def test_merge_renumbers_and_keeps_samples():
    a, b = _two_profiles()
    m = _pprof.merge([a, b])
    assert [s.values for s in m.samples] == [[1], [2], [5]]
    assert m.samples[0].locations[0] is m.samples[1].locations[0]  # same frame -> same location
    assert sorted(m.locations) == [1, 2]
    assert sorted(m.functions) == [1, 2]
    assert m.string_table[0] == "" and len(set(m.string_table)) == len(m.string_table)
    assert {"f", "g", "x.py", "lock name", "x.py:1:l", "lock-acquire", "count"} <= set(m.string_table)
    assert m.time_nanos == 100 and m.duration_nanos == 120
    assert m.comments == ["ca", "cb"]
    assert m.path == ["a", "b"]
    # inputs untouched
    assert a.samples[0].locations[0].id == 3
    assert _pprof.merge([]).samples == []


def test_merge_rejects_different_sample_types():
    a, b = _two_profiles()
    b.sample_types = [ValueType("cpu", "nanoseconds")]
    with pytest.raises(ValueError, match="different sample types"):
        _pprof.merge([a, b])
    # an empty profile (no sample types) merges with anything
    assert len(_pprof.merge([_pprof.Profile(), a]).samples) == 1


def test_aggregate_sums_identical_stacks_and_labels():
    a, b = _two_profiles()
    agg = _pprof.aggregate(_pprof.merge([a, b, a]))
    assert [(s.values, s.labels) for s in agg.samples] == [([4], {"lock name": "x.py:1:l"}), ([5], {})]
    assert agg.time_nanos == 100


def test_format_profile_mentions_everything():
    text = _pprof.format_profile(_pprof.parse_bytes(encoded("golden")), max_frames=2)
    for needle in [
        "sample types: lock-acquire/count, lock-acquire-wait/nanoseconds",
        "comment: first comment",
        "samples: 3",
        "lock-acquire=1",
        "'lock name': 'test_x.py:12:lock'",
        "at TestX.test_y (/src/test_x.py:13)",
        "2 more frame(s)",
        "<empty stack>",
    ]:
        assert needle in text, (needle, text)


if __name__ == "__main__":
    # Regenerate ENCODED from CASES with protoc and rewrite this file.
    if PROTOC is None:
        sys.exit("protoc is not installed")
    lines = ["ENCODED = {  # generated by `python tests/test_pprof_reader.py` (protoc %s)" % (
        subprocess.run([PROTOC, "--version"], stdout=subprocess.PIPE, check=True).stdout.decode().split()[-1]
    )]
    for name in sorted(CASES):
        h = protoc_encode(CASES[name][2], CASES[name][0], CASES[name][1]).hex()
        chunks = [h[i : i + 96] for i in range(0, len(h), 96)] or [""]
        lines.append("    %r: (" % name)
        lines.extend('        "%s"' % c for c in chunks)
        lines.append("    ),")
    lines.append("}")
    path = os.path.abspath(__file__)
    with open(path) as f:
        src = f.read()
    start = src.index("ENCODED = {")
    end = src.index("\n}\n", start) + 3
    with open(path, "w") as f:
        f.write(src[:start] + "\n".join(lines) + "\n" + src[end:])
    print("rewrote ENCODED in %s (%d cases)" % (path, len(CASES)))
