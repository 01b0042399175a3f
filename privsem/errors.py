"""Error types of privsem.

Every error names what was wrong and how to fix it. Protocol invariants of an honest party raise
:class:`ProtocolAbort`; privacy refusals raise :class:`BudgetExceeded`; bad user input raises
:class:`ConfigError` or :class:`DataError`. None of them is ever raised with ``assert``.
"""

from __future__ import annotations


class PrivsemError(Exception):
    """Base class of every error privsem raises on purpose."""


class ConfigError(PrivsemError, ValueError):
    """A configuration field has a bad value. The message names the field, the value and the fix."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, value, fix
        super().__init__(f"{field}: {value!r} is not valid; {fix}")


class DataError(PrivsemError, ValueError):
    """A data file is malformed. The message names the file and line."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


class ModelNotAvailable(PrivsemError, RuntimeError):
    """A model was asked for that is not installed or cannot be loaded."""


class EmbeddingRejected(PrivsemError, ValueError):
    """A client's embedding matrix failed validation before leaving the client (T30)."""


class BudgetExceeded(PrivsemError, RuntimeError):
    """A release would exceed the client's privacy budget; the client refuses (T27)."""


class LedgerCorrupted(PrivsemError, RuntimeError):
    """The ledger file failed its integrity check; the client must not participate (T29)."""


class ProtocolAbort(PrivsemError, RuntimeError):
    """An honest party's invariant failed; the message names the fact that failed."""


class MessageError(ProtocolAbort):
    """A message could not be decoded or failed validation at the boundary."""


class StateCorrupted(PrivsemError, RuntimeError):
    """A client's saved state (journal, checkpoint, cached release) cannot be trusted."""


class RunFolderInUse(PrivsemError, RuntimeError):
    """A run folder already holds a run; it is resumed explicitly, never overwritten."""
