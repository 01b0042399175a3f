"""The party host: where a node's privsem parties live while Flower moves their messages.

Flower runs a ``ClientApp`` once per message, in a fresh process in a deployment (``flwr-
clientapp``) or in whichever simulation actor is free. A privsem client cannot live there: it
holds its model, its ledger and, within a round, the secret keys of the masking protocol, and
secret keys are never serialised (so they cannot ride in Flower's ``Context.state``). The
ClientApp is therefore a relay: it hands each :class:`~privsem.protocol.messages.Delivery` to
the node's :class:`PartyHost` over a Unix socket on the same machine and returns the host's
:class:`~privsem.protocol.messages.DeliveryAnswer`. The host keeps its parties in memory and
delivers to them one at a time (the parties share torch's global state), through the same
:mod:`privsem.runtime.parties` endpoints the in-process runtime calls.

The socket lives in a fresh directory only its owner may enter (mode 0700). Frames on it are
length-prefixed privsem wire frames (no pickle), bounded by
:data:`~privsem.protocol.wire.MAX_MESSAGE_BYTES`.

Faults (for simulation and tests, never on by default): ``faults(party, kind, stage)`` returns
``"drop"`` (the host closes the connection without an answer: the node crashed) or ``"hang"``
(the host holds the connection for ``hang_seconds`` (a number, or a function of the kind),
then closes it without delivering: the node is unresponsive), or None.
"""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

from privsem.aggregation.base import Gone
from privsem.errors import MessageError, ProtocolAbort
from privsem.protocol.messages import Delivery, DeliveryAnswer, decode, encode
from privsem.protocol.wire import MAX_MESSAGE_BYTES
from privsem.runtime.parties import KINDS, Endpoint

Fault = Callable[[str, str, str], str | None]
_LEN = struct.Struct("<I")
_LIMIT = MAX_MESSAGE_BYTES + 64 * 1024  # a frame plus its envelope


def send_frame(sock: socket.socket, data: bytes) -> None:
    if len(data) > _LIMIT:
        raise MessageError(f"relay: frame of {len(data)} bytes exceeds {_LIMIT}")
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> bytes | None:
    """One length-prefixed frame; None when the peer closed before sending one."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > _LIMIT:
        raise MessageError(f"relay: announced frame of {n} bytes exceeds {_LIMIT}")
    body = _recv_exact(sock, n)
    if body is None:
        raise MessageError(f"relay: connection closed {n} bytes into a frame")
    return body


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise MessageError(f"relay: connection closed {got} of {n} bytes into a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def answer_of(delivery: Delivery, result: bytes | None | Gone) -> DeliveryAnswer:
    if isinstance(result, Gone):
        return DeliveryAnswer(run=delivery.run, party=delivery.party, status="gone",
                              reason=result.reason, frame=b"")
    if result is None:
        return DeliveryAnswer(run=delivery.run, party=delivery.party, status="none", reason="",
                              frame=b"")
    return DeliveryAnswer(run=delivery.run, party=delivery.party, status="reply", reason="",
                          frame=result)


class PartyHost:
    """Serves ``endpoints`` (party -> endpoint) of run ``run_id`` on a Unix socket.

    Use as a context manager, or call :meth:`start` and :meth:`close`. :attr:`path` is the
    socket's path, for the ClientApp (``node_config["privsem-host"]``)."""

    def __init__(self, run_id: str, endpoints: Mapping[str, Endpoint], *,
                 faults: Fault | None = None,
                 hang_seconds: float | Callable[[str], float] = 0.0,
                 directory: str | Path | None = None) -> None:
        self.run_id, self.endpoints = run_id, dict(endpoints)
        self.faults, self.hang_seconds = faults, hang_seconds
        self._dir = Path(tempfile.mkdtemp(prefix="privsem-host-", dir=directory))
        os.chmod(self._dir, 0o700)
        self.path = str(self._dir / "host.sock")
        self.lock = threading.Lock()  # one delivery at a time: parties share torch's state
        self.delivered: dict[str, int] = {}  # party -> deliveries handled (for tests)
        host = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                host._serve(self.request)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(self.path, Handler)
        os.chmod(self.path, 0o600)
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, name="privsem-host",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for p in (Path(self.path), self._dir):
            try:
                p.unlink() if p.is_socket() else p.rmdir()
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, sock: socket.socket) -> None:
        try:
            frame = recv_frame(sock)
            if frame is None:
                return
            delivery = decode(frame, Delivery)
        except MessageError as e:
            _try_send(sock, encode(DeliveryAnswer(run="", party="", status="gone",
                                                  reason=f"malformed delivery: {e}", frame=b"")))
            return
        answer = self.deliver(delivery)
        if answer is not None:
            _try_send(sock, encode(answer))

    def deliver(self, d: Delivery) -> DeliveryAnswer | None:
        """Hands ``d`` to its party; None when a fault says the node gives no answer."""
        if d.run != self.run_id:
            return answer_of(d, Gone(f"delivery for run {d.run!r}; this node serves run "
                                     f"{self.run_id!r}"))
        if d.party not in self.endpoints:
            return answer_of(d, Gone(f"this node does not host party {d.party!r}"))
        if d.kind not in KINDS:
            return answer_of(d, Gone(f"unknown delivery kind {d.kind!r}"))
        fault = self.faults(d.party, d.kind, d.stage) if self.faults else None
        if fault == "hang":
            hang = self.hang_seconds
            # outside the lock: the other parties go on
            time.sleep(hang(d.kind) if callable(hang) else hang)
            return None
        if fault == "drop":
            return None
        with self.lock:
            try:
                result = self.endpoints[d.party].handle(d.kind, d.frame)
            except ProtocolAbort as e:  # an endpoint that could not even record the abort
                result = Gone(str(e))
            self.delivered[d.party] = self.delivered.get(d.party, 0) + 1
        return answer_of(d, result)


def _try_send(sock: socket.socket, data: bytes) -> None:
    try:
        send_frame(sock, data)
    except OSError:
        pass  # the relay went away (its Flower task was cancelled): nothing to answer


def relay(path: str, frame: bytes, *, timeout: float | None) -> bytes:
    """Sends one Delivery frame to the host at ``path``; returns its DeliveryAnswer frame.
    Raises ConnectionError when the host gives no answer (a crashed or hung node)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        send_frame(sock, frame)
        answer = recv_frame(sock)
    if answer is None:
        raise ConnectionError("the privsem host closed the connection without an answer")
    return answer
