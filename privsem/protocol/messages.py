"""Protocol messages: frozen typed dataclasses, one wire format, a stage enum and its transitions.

Rules for changing it:
- Every message is a frozen dataclass here, with a ``TYPE`` tag; adding a field bumps ``VERSION``.
- Wire format (no pickle, ever): ``MAGIC | u32 header length | JSON header | array bytes``. The
  header names each array's dtype (``<f4`` or ``<f8`` only), shape and byte range; decoding
  checks every length against the frame before touching it and against ``MAX_MESSAGE_BYTES``.
- Messages are decoded and validated once, at the boundary (:func:`decode`); inside, code is
  typed. A bad frame raises :class:`~privsem.errors.MessageError`.
- :data:`TRANSITIONS` is the table of valid stage changes; anything else raises.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from privsem.errors import MessageError, ProtocolAbort

MAGIC = b"PSM\x01"
VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024
DTYPES = {"<f4": np.float32, "<f8": np.float64}


class Stage(enum.Enum):
    IDLE = "idle"
    SPEC = "spec"  # server announced the round
    UPLOAD = "upload"  # clients' noisy matrices collected
    CONSENSUS = "consensus"  # consensus broadcast
    NOMINATION = "nomination"  # shared mode: nominated texts collected
    LABELS = "labels"  # shared mode: chosen pseudo-labels broadcast
    DONE = "done"
    ABORTED = "aborted"


TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.IDLE: frozenset({Stage.SPEC}),
    Stage.SPEC: frozenset({Stage.UPLOAD, Stage.ABORTED}),
    Stage.UPLOAD: frozenset({Stage.CONSENSUS, Stage.ABORTED}),
    Stage.CONSENSUS: frozenset({Stage.NOMINATION, Stage.DONE, Stage.ABORTED}),
    Stage.NOMINATION: frozenset({Stage.LABELS, Stage.ABORTED}),
    Stage.LABELS: frozenset({Stage.DONE, Stage.ABORTED}),
    Stage.DONE: frozenset({Stage.SPEC}),
    Stage.ABORTED: frozenset({Stage.SPEC}),
}


class StageMachine:
    """Holds one party's stage; ``advance`` refuses every change not in :data:`TRANSITIONS`."""

    def __init__(self, party: str) -> None:
        self.party = party
        self.stage = Stage.IDLE

    def advance(self, to: Stage) -> None:
        if to not in TRANSITIONS[self.stage]:
            raise ProtocolAbort(f"{self.party}: transition {self.stage.value} -> {to.value} is "
                                "not allowed")
        self.stage = to

    def expect(self, *stages: Stage) -> None:
        if self.stage not in stages:
            raise ProtocolAbort(f"{self.party}: message arrived in stage {self.stage.value}, "
                                f"expected {' or '.join(s.value for s in stages)}")


@dataclass(frozen=True)
class RoundSpec:
    """Server → clients: what this round is. ``session_id`` binds round, cohort, prompts, params."""

    TYPE: ClassVar[str] = "round_spec"
    round: int
    session_id: str
    cohort: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    prompt_set_hash: str
    dim: int
    params: dict[str, Any]


@dataclass(frozen=True)
class EmbeddingUpload:
    """Client → server (plaintext back-end): the clipped, noised (prompts × dim) matrix."""

    TYPE: ClassVar[str] = "embedding_upload"
    session_id: str
    round: int
    client: str
    noise_std: float
    matrix: np.ndarray  # (prompts, dim) float32


@dataclass(frozen=True)
class ConsensusBroadcast:
    """Server → clients: consensus point and agreement per prompt."""

    TYPE: ClassVar[str] = "consensus"
    session_id: str
    round: int
    contributors: tuple[str, ...]
    noise_std_of_consensus: float
    consensus: np.ndarray  # (prompts, dim) float32
    agreement: np.ndarray  # (prompts,) float32, debiased for the known noise


@dataclass(frozen=True)
class Nomination:
    """Client → server (shared mode): the client's candidate nearest the consensus, per prompt."""

    TYPE: ClassVar[str] = "nomination"
    session_id: str
    round: int
    client: str
    texts: tuple[str | None, ...]  # None where the prompt was skipped


@dataclass(frozen=True)
class PseudoLabels:
    """Server → clients (shared mode): the chosen text per prompt."""

    TYPE: ClassVar[str] = "pseudo_labels"
    session_id: str
    round: int
    texts: tuple[str | None, ...]


MESSAGE_TYPES: dict[str, Any] = {c.TYPE: c for c in
                                  (RoundSpec, EmbeddingUpload, ConsensusBroadcast, Nomination,
                                   PseudoLabels)}


def encode(msg: Any) -> bytes:
    header: dict[str, Any] = {"type": msg.TYPE, "version": VERSION, "fields": {}, "arrays": {}}
    blobs: list[bytes] = []
    offset = 0
    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        if isinstance(v, np.ndarray):
            arr = np.ascontiguousarray(v)
            dt = arr.dtype.newbyteorder("<").str
            if dt not in DTYPES:
                raise MessageError(f"encode {msg.TYPE}: array {f.name} has dtype {arr.dtype}")
            data = arr.astype(dt, copy=False).tobytes()
            header["arrays"][f.name] = {"dtype": dt, "shape": list(arr.shape), "offset": offset,
                                        "nbytes": len(data)}
            blobs.append(data)
            offset += len(data)
        else:
            header["fields"][f.name] = list(v) if isinstance(v, tuple) else v
    hb = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    frame = MAGIC + struct.pack("<I", len(hb)) + hb + b"".join(blobs)
    if len(frame) > MAX_MESSAGE_BYTES:
        raise MessageError(f"encode {msg.TYPE}: {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return frame


def decode(frame: bytes, expected: Any = None) -> Any:
    """Parses and validates one frame. Raises MessageError on anything malformed."""
    if not isinstance(frame, (bytes, bytearray)):
        raise MessageError("decode: frame must be bytes")
    if len(frame) > MAX_MESSAGE_BYTES:
        raise MessageError(f"decode: frame of {len(frame)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(frame) < 8 or frame[:4] != MAGIC:
        raise MessageError("decode: not a privsem frame (bad magic)")
    (hlen,) = struct.unpack("<I", frame[4:8])
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(frame):
        raise MessageError(f"decode: header length {hlen} exceeds the frame")
    try:
        header = json.loads(frame[8:8 + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MessageError(f"decode: header is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        raise MessageError(f"decode: unsupported version {header.get('version') if isinstance(header, dict) else None!r}")
    cls: Any = MESSAGE_TYPES.get(header.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise MessageError(f"decode: unknown message type {header.get('type')!r}")
    if expected is not None and cls is not expected:
        raise MessageError(f"decode: expected {expected.TYPE}, got {cls.TYPE}")
    body = frame[8 + hlen:]
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    fields, arrays = header.get("fields", {}), header.get("arrays", {})
    if set(fields) | set(arrays) != set(names) or set(fields) & set(arrays):
        raise MessageError(f"decode {cls.TYPE}: fields {sorted(set(fields) | set(arrays))} do not "
                           f"match {sorted(names)}")
    end = 0
    for name, meta in arrays.items():
        try:
            dt, shape = DTYPES[meta["dtype"]], tuple(int(s) for s in meta["shape"])
            off, nbytes = int(meta["offset"]), int(meta["nbytes"])
        except (KeyError, TypeError, ValueError):
            raise MessageError(f"decode {cls.TYPE}: bad array descriptor for {name}") from None
        if any(s < 0 for s in shape) or nbytes != int(np.prod(shape)) * np.dtype(dt).itemsize:
            raise MessageError(f"decode {cls.TYPE}: array {name} size does not match its shape")
        if off != end or off + nbytes > len(body):
            raise MessageError(f"decode {cls.TYPE}: array {name} lies outside the frame")
        kwargs[name] = np.frombuffer(body[off:off + nbytes], dtype=dt).reshape(shape).copy()
        end = off + nbytes
    if end != len(body):
        raise MessageError(f"decode {cls.TYPE}: {len(body) - end} trailing bytes")
    for name, v in fields.items():
        kwargs[name] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise MessageError(f"decode {cls.TYPE}: {e}") from None
