"""The privacy ledger: every release of every client in every round, persisted before release.

Rules for changing it:
- An entry is appended and fsync'd *before* the noisy output it accounts for leaves the client
  (charge first). A crash after charging over-counts; it never under-counts.
- Entries hold ``dp_accounting`` events as JSON; ε is recomputed from all of a client's events
  of one unit, never from running sums.
- A charge that would take a client's unit above its budget raises
  :class:`~privsem.errors.BudgetExceeded` and writes nothing. An infinite ε exceeds every
  finite budget; a budget of ``inf`` means the unit makes no claim (DP turned off).
- Each line carries the SHA-256 of the previous line (a hash chain). A file that fails to parse
  or to chain raises :class:`~privsem.errors.LedgerCorrupted`: the client must not participate,
  and the ledger is never reset.
- A chain cannot show that lines were cut off its end (a rollback to an earlier, valid state).
  After every append, a head file (``ledger.jsonl.head``: sequence number and hash of the last
  entry, written atomically) records how far the ledger had come; a ledger shorter than its
  head, one that disagrees with it, a head without its ledger or a ledger of more than one
  entry without its head fail closed (T29).
- The head is keyed: it carries an HMAC-SHA256 of its sequence number and hash under a 256-bit
  key made from OS entropy when the ledger is created, kept beside it (``ledger.jsonl.key``,
  mode 0600, never in the ledger or a report). Cutting entries and re-hashing chain and head
  needs the key; without it the forged head is refused. A ledger with entries whose key is
  missing is refused too (a deleted key is not a downgrade to an unkeyed head).
- Every line and the head are bounded in size and must be JSON objects of the right fields;
  anything else is a :class:`~privsem.errors.LedgerCorrupted` naming file and line. The head may lag by the one entry whose append a
  crash interrupted. Rolling back both files together is not detectable from them alone: the
  clients' state journals (``privsem.protocol.state``) name the ledger entries they charged,
  and a resumed client checks them (a third file to roll back); a deployment keeps the head on
  separate, append-only storage (``head=``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_accounting import dp_event as ev

from privsem import bounded_json
from privsem.errors import BudgetExceeded, LedgerCorrupted
from privsem.privacy.analysis import epsilon, event_from_json, event_to_json

UNITS = ("record", "client")
GENESIS = "0" * 64
MAX_LINE_BYTES = 256 * 1024  # one ledger entry (an event with its detail is a few KB)
MAX_LEDGER_BYTES = 512 * 1024 * 1024
KEY_BYTES = 32
MAX_DEPTH = 16  # an entry's JSON: its event nests a few levels
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    client: str
    round: int
    unit: str
    mechanism: str
    event: dict[str, Any]
    delta: float
    epsilon_after: float
    budget: float
    detail: dict[str, Any]
    time: float
    prev: str
    hash: str

    def dp_event(self) -> ev.DpEvent:
        return event_from_json(self.event)


def _is_digest(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and set(x) <= _HEX


def head_mac(key: bytes, seq: int, digest: str) -> str:
    """The head's HMAC-SHA256 over its sequence number and entry hash."""
    return hmac.new(key, f"privsem/ledger/head/v1|{seq}|{digest}".encode(),
                    hashlib.sha256).hexdigest()


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


class Ledger:
    """An append-only, hash-chained JSONL ledger shared by the clients of one store."""

    def __init__(self, path: str | Path, *, accountant: str = "rdp",
                 head: str | Path | None = None, key: str | Path | None = None) -> None:
        self.path = Path(path)
        self.head = Path(head) if head is not None else self.path.with_name(
            self.path.name + ".head")
        self.key_path = Path(key) if key is not None else self.path.with_name(
            self.path.name + ".key")
        self.accountant = accountant
        self._entries: list[LedgerEntry] = []
        if self.path.exists():
            self._entries = self._load()
        self._key = self._load_key()
        self._check_head()

    def _load_key(self) -> bytes | None:
        """The head's MAC key; made on first use of a new ledger. None: no entry yet and no key
        (made with the first charge)."""
        if not self.key_path.exists():
            if self._entries or self.head.exists():
                raise LedgerCorrupted(
                    f"{self.key_path}: missing, but {self.path} has entries (or a head): the "
                    "ledger's head cannot be authenticated, so the client must not participate "
                    "(restore the key file from where the ledger came from)")
            return None
        try:
            if self.key_path.stat().st_size > 4 * KEY_BYTES:
                raise ValueError("larger than a key")
            key = bytes.fromhex(self.key_path.read_text(encoding="ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise LedgerCorrupted(f"{self.key_path}: unreadable as a ledger key ({e}); the client "
                                  "must not participate") from None
        if len(key) != KEY_BYTES:
            raise LedgerCorrupted(f"{self.key_path}: holds {len(key)} bytes, a ledger key has "
                                  f"{KEY_BYTES}; the client must not participate")
        return key

    def _make_key(self) -> bytes:
        from privsem.rng import secret_bytes

        key = secret_bytes(KEY_BYTES)
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex())
            fh.flush()
            os.fsync(fh.fileno())
        return key

    def _mac(self, seq: int, digest: str) -> str:
        if self._key is None:
            self._key = self._make_key()
        return head_mac(self._key, seq, digest)

    def _check_head(self) -> None:
        n = len(self._entries)
        if not self.head.exists():
            if n > 1:
                raise LedgerCorrupted(f"{self.head}: missing, but {self.path} holds {n} entries; "
                                      "the ledger cannot be shown not to be rolled back, so the "
                                      "client must not participate (restore the head file)")
            if n == 1:
                self._write_head()  # a crash between the first append and its head
            return
        try:
            if self.head.stat().st_size > 4096:
                raise ValueError("larger than a head file")
            h = bounded_json.loads(self.head.read_bytes(), max_depth=2)
            if not isinstance(h, dict) or set(h) != {"seq", "hash", "mac"}:
                raise ValueError("not an object of seq, hash and mac")
            seq, digest, mac = h["seq"], h["hash"], h["mac"]
            if type(seq) is not int or seq < 0 or not _is_digest(digest) or not _is_digest(mac):
                raise ValueError("seq must be an integer >= 0, hash and mac 64 hex digits")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise LedgerCorrupted(f"{self.head}: unreadable ({e}); the client must not "
                                  "participate") from None
        if self._key is None or not hmac.compare_digest(self._mac(seq, digest), mac):
            raise LedgerCorrupted(f"{self.head}: its MAC does not verify under "
                                  f"{self.key_path}: the head was not written by this ledger "
                                  "(cut entries and a recomputed head, or another run's key); "
                                  "the client must not participate")
        if not self.path.exists() or n <= seq:
            raise LedgerCorrupted(
                f"{self.path}: holds {n} entries but its head records entry {seq}: the ledger "
                "was rolled back or deleted; the client must not participate (restore it from a "
                "backup; never reset it)")
        if self._entries[seq].hash != digest:
            raise LedgerCorrupted(f"{self.path}: entry {seq} differs from the one its head "
                                  "records (replaced by another history); the client must not "
                                  "participate")
        if n > seq + 2:
            raise LedgerCorrupted(f"{self.path}: {n - seq - 1} entries beyond its head (at most "
                                  "one, after a crash, is possible); the client must not "
                                  "participate")
        if n == seq + 2:
            self._write_head()

    def _write_head(self) -> None:
        last = self._entries[-1]
        body = json.dumps({"seq": last.seq, "hash": last.hash,
                           "mac": self._mac(last.seq, last.hash)}, sort_keys=True)
        tmp = self.head.with_name(f".{self.head.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.head)
        fd = os.open(self.head.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _load(self) -> list[LedgerEntry]:
        entries: list[LedgerEntry] = []
        prev = GENESIS
        try:
            size = self.path.stat().st_size
            if size > MAX_LEDGER_BYTES:
                raise LedgerCorrupted(f"{self.path}: {size} bytes, more than a ledger may hold "
                                      f"({MAX_LEDGER_BYTES}); the client must not participate")
            raw = self.path.read_bytes()
        except OSError as e:
            raise LedgerCorrupted(f"{self.path}: unreadable ({e}); the client must not "
                                  "participate") from None
        if raw and not raw.endswith(b"\n"):
            raise LedgerCorrupted(f"{self.path}: last line is truncated; refusing to continue "
                                  "(restore the ledger from a backup, never reset it)")
        for n, line in enumerate(raw.split(b"\n")[:-1] if raw else [], start=1):
            try:
                if len(line) > MAX_LINE_BYTES:
                    raise ValueError(f"{len(line)} bytes, more than an entry holds "
                                     f"({MAX_LINE_BYTES})")
                # an entry may hold ε or a budget of Infinity (a unit that claims nothing)
                d = bounded_json.loads(line, max_depth=MAX_DEPTH, allow_nonfinite=True)
                if not isinstance(d, dict):
                    raise TypeError(f"a JSON {type(d).__name__}, not an entry object")
                body = {k: v for k, v in d.items() if k != "hash"}
                if d["prev"] != prev or _digest(body) != d["hash"] or d["seq"] != n - 1:
                    raise ValueError("hash chain broken")
                entry = LedgerEntry(**d)
                entry.dp_event()
            except (ValueError, KeyError, TypeError, OverflowError) as exc:
                raise LedgerCorrupted(f"{self.path}:{n}: entry fails its integrity check ({exc}); "
                                      "the client must not participate") from None
            entries.append(entry)
            prev = entry.hash
        return entries

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def events(self, client: str, unit: str) -> list[ev.DpEvent]:
        return [e.dp_event() for e in self._entries if e.client == client and e.unit == unit]

    def spent(self, client: str, unit: str, *, delta: float) -> float:
        return epsilon(self.events(client, unit), delta=delta, accountant=self.accountant)

    def epsilon_if(self, client: str, unit: str, extra: Sequence[ev.DpEvent], *,
                   delta: float) -> float:
        """ε of the client's unit if ``extra`` were charged too (nothing is written)."""
        return epsilon([*self.events(client, unit), *extra], delta=delta,
                       accountant=self.accountant)

    def charge(self, *, client: str, round: int, unit: str, mechanism: str, event: ev.DpEvent,
               delta: float, budget: float, detail: dict[str, Any] | None = None) -> LedgerEntry:
        """Records ``event`` durably, or raises BudgetExceeded without writing anything."""
        if unit not in UNITS:
            raise ValueError(f"ledger: unit must be one of {UNITS}, got {unit!r}")
        eps = self.epsilon_if(client, unit, [event], delta=delta)
        if not eps <= budget:  # an infinite ε exceeds any finite budget; NaN never passes
            raise BudgetExceeded(
                f"client {client}: {mechanism} in round {round} would bring {unit}-level ε to "
                f"{eps:.4g} > budget {budget:.4g} (δ={delta:g}); the release is refused")
        if self._key is None:  # the key exists before the first entry does
            self._key = self._make_key()
        prev = self._entries[-1].hash if self._entries else GENESIS
        body: dict[str, Any] = {"seq": len(self._entries), "client": client, "round": round, "unit": unit,
                "mechanism": mechanism, "event": event_to_json(event), "delta": delta,
                "epsilon_after": eps, "budget": budget, "detail": dict(detail or {}),
                "time": time.time(), "prev": prev}
        entry = LedgerEntry(**body, hash=_digest(body))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**body, "hash": entry.hash}, sort_keys=True) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._entries.append(entry)
        self._write_head()
        return entry
