"""JSON from outside, bounded before the parser recurses or allocates.

Every JSON text privsem takes from another party or from a file (frame headers, JSONL data, the
ledger) goes through :func:`loads`: the nesting depth is found by one linear scan of the bytes
before parsing (Python's parser recurses per level, so a text nested 100,000 deep would end in
``RecursionError``), integers are bounded in digits while parsing (Python refuses to convert
more than 4,300 and a long one costs quadratic time), and ``NaN``, ``Infinity`` and numbers that
overflow to infinity are refused unless the caller allows them (privsem's own files write an
unbounded ε or budget as ``Infinity``). Every failure is a :class:`JSONBoundError` (a ``ValueError``)
whose message says what was wrong; callers turn it into their own typed error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# Everything but brackets, quotes and backslashes, deleted at C speed before the scan.
_SYNTAX = bytes(b for b in range(256) if b not in b'[]{}"\\')


class JSONBoundError(ValueError):
    """A JSON text outside its bounds, or not JSON."""


def depth_problem(data: bytes, max_depth: int) -> str | None:
    """Why ``data`` nests deeper than ``max_depth`` (None if it does not): one linear scan of
    its brackets outside strings."""
    depth, in_string, escaped = 0, False, False
    for b in data.translate(None, delete=_SYNTAX):
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return f"nests deeper than {max_depth} levels"
        elif b in (0x5D, 0x7D):
            depth -= 1
    return None


def loads(data: bytes | str, *, max_depth: int, max_int_digits: int = 24,
          allow_nonfinite: bool = False) -> Any:
    """``json.loads`` within the bounds above; raises JSONBoundError. ``allow_nonfinite``: keep
    ``NaN``, ``Infinity`` and overflowing numbers (as Python's json does)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    problem = depth_problem(raw, max_depth)
    if problem:
        raise JSONBoundError(problem)

    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > max_int_digits:
            raise JSONBoundError(f"an integer of {len(text)} digits (at most {max_int_digits})")
        return int(text)

    def parse_float(text: str) -> float:
        value = float(text)
        if not allow_nonfinite and not math.isfinite(value):
            raise JSONBoundError(f"the number {text[:32]!r} is not finite")
        return value

    def parse_constant(text: str) -> Any:
        raise JSONBoundError(f"{text} is not a number")

    if isinstance(data, str):
        text = data
    else:
        # UTF-8 only: json.loads would guess UTF-16 or UTF-32 from the first bytes
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JSONBoundError(f"not UTF-8 (byte {e.start})") from None
    try:
        if allow_nonfinite:
            return json.loads(text, parse_int=parse_int, parse_float=parse_float)
        return json.loads(text, parse_int=parse_int, parse_float=parse_float,
                          parse_constant=parse_constant)
    except json.JSONDecodeError as e:
        raise JSONBoundError(f"not valid JSON ({e.msg}, at character {e.pos})") from None


def read_file(path: str | Path, *, max_bytes: int, max_depth: int,
              allow_nonfinite: bool = False) -> Any:
    """The JSON file at ``path``, read no further than ``max_bytes`` (a larger file is refused
    before it is parsed) and parsed by :func:`loads`. JSONBoundError for a bound or for text
    that is not JSON; OSError where the file cannot be read."""
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise JSONBoundError(f"larger than {max_bytes} bytes")
    return loads(raw, max_depth=max_depth, allow_nonfinite=allow_nonfinite)
