"""The wire format of every privsem message: no pickle, typed, bounded.

Rules for changing it:
- Frame: ``MAGIC | u32 header length | JSON header | binary body``. The header carries the
  message type and version, scalar fields as JSON, and for every array and every ``bytes``
  value its dtype, shape and byte range in the body.
- Decoding checks every length against the frame before touching it and against
  :data:`MAX_MESSAGE_BYTES`; bounds the header's JSON before parsing it (nesting depth, by a
  scan of the bytes: :data:`MAX_DEPTH`) and while parsing it (integer digits
  :data:`MAX_INT_DIGITS`, no NaN or infinity), then every string (:data:`MAX_STRING_CHARS`) and
  list (:data:`MAX_ITEMS`); refuses non-finite values in received arrays; then checks every field
  against the dataclass's annotation (``int`` is never a ``bool``, tuples hold only their
  declared item type). Every failure raises :class:`~privsem.errors.MessageError` (the fuzz test
  ``tests/test_wire_fuzz.py`` holds this); nothing is ever executed from a frame.
- Only the dtypes in :data:`DTYPES` travel; adding one is a format change (bump ``VERSION``).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import types
import typing
from typing import Any, Union

import numpy as np

from privsem import bounded_json
from privsem.errors import MessageError

MAGIC = b"PSM\x01"
VERSION = 4
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 16  # nesting of the header's JSON (a valid header needs at most 6)
MAX_INT_DIGITS = 24  # a JSON integer in a header (u64 needs 20)
MAX_STRING_CHARS = 1 << 20  # one string in a header (a pseudo-label, a nominated answer)
MAX_ITEMS = 1 << 16  # one list or mapping in a header (prompts, cohort, byte ranges)
DTYPES: dict[str, type[np.generic]] = {"<f4": np.float32, "<f8": np.float64,
                                       "<u4": np.uint32, "<u8": np.uint64}


def encode(msg: Any) -> bytes:
    """Serialises a message dataclass (one with a ``TYPE`` class attribute)."""
    header: dict[str, Any] = {"type": msg.TYPE, "version": VERSION, "fields": {}, "arrays": {},
                              "blobs": {}}
    body = bytearray()

    def put(data: bytes) -> list[int]:
        start = len(body)
        body.extend(data)
        return [start, len(data)]

    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        if isinstance(v, np.ndarray):
            arr = np.ascontiguousarray(v)
            dt = arr.dtype.newbyteorder("<").str
            if dt not in DTYPES:
                raise MessageError(f"encode {msg.TYPE}: array {f.name} has dtype {arr.dtype}")
            off, n = put(arr.astype(dt, copy=False).tobytes())
            header["arrays"][f.name] = {"dtype": dt, "shape": list(arr.shape), "offset": off,
                                        "nbytes": n}
        elif isinstance(v, bytes):
            header["blobs"][f.name] = {"tuple": False, "parts": [put(v)]}
        elif isinstance(v, tuple) and v and all(isinstance(x, bytes) for x in v):
            header["blobs"][f.name] = {"tuple": True, "parts": [put(x) for x in v]}
        else:
            header["fields"][f.name] = list(v) if isinstance(v, tuple) else v
    hb = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    frame = MAGIC + struct.pack("<I", len(hb)) + hb + bytes(body)
    if len(frame) > MAX_MESSAGE_BYTES:
        raise MessageError(f"encode {msg.TYPE}: {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return frame


def _span(meta: Any, body_len: int, what: str) -> tuple[int, int]:
    try:
        off, n = meta[0], meta[1]
    except (TypeError, IndexError, KeyError):
        raise MessageError(f"decode: bad byte range for {what}") from None
    if type(off) is not int or type(n) is not int:
        raise MessageError(f"decode: bad byte range for {what}")
    if off < 0 or n < 0 or off + n > body_len:
        raise MessageError(f"decode: {what} lies outside the frame")
    return off, n


def _check_type(tp: Any, value: Any, where: str) -> Any:
    """``value`` converted to ``tp`` if it has that type; raises MessageError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_type(arg, value, where)
            except MessageError:
                pass
        raise MessageError(f"decode: {where} has the wrong type ({type(value).__name__})")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise MessageError(f"decode: {where} must be a list")
        return tuple(_check_type(args[0], x, f"{where}[{i}]") for i, x in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise MessageError(f"decode: {where} must be a mapping")
        return value
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp in (str, bytes):
        ok = isinstance(value, tp)
    elif tp is np.ndarray:
        ok = isinstance(value, np.ndarray)
    else:
        raise MessageError(f"decode: {where} has an unsupported declared type {tp!r}")
    if not ok:
        raise MessageError(f"decode: {where} must be {getattr(tp, '__name__', tp)}, got "
                           f"{type(value).__name__}")
    return value


def _check_sizes(value: Any, where: str) -> None:
    """Every string and list of a parsed header within bounds and every string encodable
    (JSON's ``\\ud800`` escape makes a lone surrogate, which is refused). The depth is already
    bounded, so the recursion is too."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise MessageError(f"decode: a string of {len(value)} characters in {where} (at "
                               f"most {MAX_STRING_CHARS})")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise MessageError(f"decode: a string in {where} is not valid Unicode") from None
    elif isinstance(value, (list, dict)):
        if len(value) > MAX_ITEMS:
            raise MessageError(f"decode: {len(value)} items in one list of {where} (at most "
                               f"{MAX_ITEMS})")
        for item in (value.items() if isinstance(value, dict) else value):
            for part in (item if isinstance(value, dict) else (item,)):
                _check_sizes(part, where)


def _parse_header(data: bytes) -> Any:
    try:
        header = bounded_json.loads(data, max_depth=MAX_DEPTH, max_int_digits=MAX_INT_DIGITS)
    except bounded_json.JSONBoundError as e:
        raise MessageError(f"decode: header {e}") from None
    _check_sizes(header, "header")
    return header


def decode(frame: bytes, registry: dict[str, Any], expected: Any = None) -> Any:
    """Parses and validates one frame against the message types in ``registry``."""
    if not isinstance(frame, (bytes, bytearray)):
        raise MessageError("decode: frame must be bytes")
    if len(frame) > MAX_MESSAGE_BYTES:
        raise MessageError(f"decode: frame of {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(frame) < 8 or frame[:4] != MAGIC:
        raise MessageError("decode: not a privsem frame (bad magic)")
    (hlen,) = struct.unpack("<I", frame[4:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(frame):
        raise MessageError(f"decode: header length {hlen} exceeds the frame")
    header = _parse_header(bytes(frame[8:8 + hlen]))
    if not isinstance(header, dict) or header.get("version") != VERSION:
        got = header.get("version") if isinstance(header, dict) else None
        raise MessageError(f"decode: unsupported version {got!r} (this side speaks {VERSION})")
    mtype = header.get("type")
    cls: Any = registry.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise MessageError(f"decode: unknown message type {mtype!r}")
    if expected is not None and cls is not expected:
        raise MessageError(f"decode: expected {expected.TYPE}, got {cls.TYPE}")
    body = memoryview(frame)[8 + hlen:]
    fields, arrays, blobs = (header.get(k, {}) for k in ("fields", "arrays", "blobs"))
    if not all(isinstance(x, dict) for x in (fields, arrays, blobs)):
        raise MessageError(f"decode {cls.TYPE}: malformed header")
    names = {f.name for f in dataclasses.fields(cls)}
    given = [*fields, *arrays, *blobs]
    if sorted(given) != sorted(names):
        raise MessageError(f"decode {cls.TYPE}: fields {sorted(given)} do not match "
                           f"{sorted(names)}")
    raw: dict[str, Any] = dict(fields)
    covered: list[tuple[int, int]] = []
    for name, meta in arrays.items():
        try:
            dt, raw_shape = DTYPES[meta["dtype"]], meta["shape"]
        except (KeyError, TypeError):
            raise MessageError(f"decode {cls.TYPE}: bad array descriptor for {name}") from None
        if not isinstance(raw_shape, list) or len(raw_shape) > 8 or not all(
                type(s) is int and 0 <= s <= MAX_MESSAGE_BYTES for s in raw_shape):
            raise MessageError(f"decode {cls.TYPE}: array {name} has an invalid shape")
        shape = tuple(raw_shape)
        off, n = _span((meta.get("offset"), meta.get("nbytes")), len(body), f"array {name}")
        size = 1
        for s in shape:  # Python integers: no overflow (np.prod wraps at 2^64)
            size *= s
        if n != size * np.dtype(dt).itemsize:
            raise MessageError(f"decode {cls.TYPE}: array {name} size does not match its shape")
        raw[name] = np.frombuffer(body[off:off + n], dtype=dt).reshape(shape).copy()
        if raw[name].dtype.kind == "f" and not np.all(np.isfinite(raw[name])):
            raise MessageError(f"decode {cls.TYPE}: array {name} holds "
                               f"{int(np.sum(~np.isfinite(raw[name])))} non-finite values")
        covered.append((off, n))
    for name, meta in blobs.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("parts"), list):
            raise MessageError(f"decode {cls.TYPE}: bad bytes descriptor for {name}")
        parts = []
        for i, p in enumerate(meta["parts"]):
            off, n = _span(p, len(body), f"bytes {name}[{i}]")
            parts.append(bytes(body[off:off + n]))
            covered.append((off, n))
        raw[name] = tuple(parts) if meta.get("tuple") else (parts[0] if len(parts) == 1 else None)
        if raw[name] is None:
            raise MessageError(f"decode {cls.TYPE}: bytes field {name} has {len(parts)} parts")
    end = 0
    for off, n in sorted(covered):
        if off != end:
            raise MessageError(f"decode {cls.TYPE}: body sections overlap or leave gaps")
        end = off + n
    if end != len(body):
        raise MessageError(f"decode {cls.TYPE}: {len(body) - end} trailing bytes")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _check_type(hints[name], raw[name], f"{cls.TYPE}.{name}") for name in names}
    return cls(**kwargs)
