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
  entry without its head fail closed (T29). The head may lag by the one entry whose append a
  crash interrupted. Rolling back both files together is not detectable from them alone: the
  clients' state journals (``privsem.protocol.state``) name the ledger entries they charged,
  and a resumed client checks them (a third file to roll back); a deployment keeps the head on
  separate, append-only storage (``head=``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_accounting import dp_event as ev

from privsem.errors import BudgetExceeded, LedgerCorrupted
from privsem.privacy.analysis import epsilon, event_from_json, event_to_json

UNITS = ("record", "client")
GENESIS = "0" * 64


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


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


class Ledger:
    """An append-only, hash-chained JSONL ledger shared by the clients of one store."""

    def __init__(self, path: str | Path, *, accountant: str = "rdp",
                 head: str | Path | None = None) -> None:
        self.path = Path(path)
        self.head = Path(head) if head is not None else self.path.with_name(
            self.path.name + ".head")
        self.accountant = accountant
        self._entries: list[LedgerEntry] = []
        if self.path.exists():
            self._entries = self._load()
        self._check_head()

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
            h = json.loads(self.head.read_text(encoding="utf-8"))
            seq, digest = int(h["seq"]), str(h["hash"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LedgerCorrupted(f"{self.head}: unreadable ({e}); the client must not "
                                  "participate") from None
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
        body = json.dumps({"seq": last.seq, "hash": last.hash}, sort_keys=True)
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
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raise LedgerCorrupted(f"{self.path}: last line is truncated; refusing to continue "
                                  "(restore the ledger from a backup, never reset it)")
        for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            try:
                d = json.loads(line)
                body = {k: v for k, v in d.items() if k != "hash"}
                if d["prev"] != prev or _digest(body) != d["hash"] or d["seq"] != n - 1:
                    raise ValueError("hash chain broken")
                e = LedgerEntry(**d)
                e.dp_event()
            except (ValueError, KeyError, TypeError) as exc:
                raise LedgerCorrupted(f"{self.path}:{n}: entry fails its integrity check ({exc}); "
                                      "the client must not participate") from None
            entries.append(e)
            prev = e.hash
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
