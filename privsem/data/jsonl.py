"""JSONL loaders for the common instruction formats.

Accepted per line (one JSON object a line, blank lines ignored):
- ``{"instruction": ..., "input": ..., "output": ...}`` (Alpaca; ``input`` optional),
- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (chat; the last message must be the
  assistant's reply, the ones before it form the prompt),
- ``{"prompt": ..., "response": ...}``.
Evaluation files add ``"scope": "own" | "other"`` (default ``own``) and an optional ``"key"``:
a short string a correct answer contains. Public prompt files hold ``{"id": ..., "prompt": ...}``
(``id`` optional). Every malformed line raises :class:`~privsem.errors.DataError` naming the file
and line; nothing is skipped silently.

Files are read within bounds: at most :data:`MAX_FILE_BYTES` a file and :data:`MAX_LINE_BYTES` a
line (a longer line is refused after reading that much of it, never read whole), UTF-8 only,
JSON nested at most :data:`MAX_DEPTH` deep (:mod:`privsem.bounded_json`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privsem import bounded_json
from privsem.errors import DataError

MAX_FILE_BYTES = 2 * 1024 ** 3
MAX_LINE_BYTES = 4 * 1024 * 1024  # one example; the longest real ones are a few tens of KB
MAX_DEPTH = 32
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One supervised example: a conversation prompt and the reply to learn."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs before the reply
    response: str


@dataclass(frozen=True)
class EvalItem:
    example: Example
    scope: str  # "own" or "other": does the question concern this client's own topics?
    key: str | None
    topic: str | None


@dataclass(frozen=True)
class PublicPrompt:
    id: str
    text: str


def resolve_data_path(value: str) -> Path:
    """``demo:NAME`` names a file of the shipped demo federation; anything else is a path."""
    if value.startswith("demo:"):
        name = value.removeprefix("demo:")
        p = Path(__file__).resolve().parent / "demo" / name
        if not p.is_file():
            raise DataError(value, None, "no such demo file; run `privsem demo-data --list`")
        return p
    return Path(value)


def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file; DataError naming the
    file and line for a missing file, invalid JSON or a line that is not an object."""
    if not path.is_file():
        raise DataError(str(path), None, "file not found")
    try:
        size = path.stat().st_size
        fh = path.open("rb")
    except OSError as e:
        raise DataError(str(path), None, f"cannot be read ({e.strerror})") from None
    if size > MAX_FILE_BYTES:
        fh.close()
        raise DataError(str(path), None, f"{size} bytes, more than a data file may hold "
                        f"({MAX_FILE_BYTES}); split it")
    with fh:
        lineno = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(str(path), lineno, f"longer than {MAX_LINE_BYTES} bytes; one "
                                "example a line, each at most that long")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), lineno, f"not UTF-8 (byte {e.start} of the line); "
                                "save the file as UTF-8") from None
            if not text.strip():
                continue
            try:
                # privsem's own JSONL (metrics) writes an unbounded ε as Infinity; data fields
                # are type-checked after this
                obj = bounded_json.loads(raw, max_depth=MAX_DEPTH, allow_nonfinite=True)
            except bounded_json.JSONBoundError as e:
                raise DataError(str(path), lineno, f"not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DataError(str(path), lineno, "each line must be a JSON object")
            yield lineno, obj


def _text(obj: dict[str, Any], key: str, path: Path, lineno: int, *, required: bool = True) -> str:
    v = obj.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v.strip()):
        raise DataError(str(path), lineno, f"field {key!r} must be a non-empty string")
    return v


def parse_example(obj: dict[str, Any], path: Path, lineno: int) -> Example:
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise DataError(str(path), lineno,
                            "'messages' must be a list of at least a user and an assistant turn")
        pairs: list[tuple[str, str]] = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(
                    m.get("content"), str):
                raise DataError(str(path), lineno,
                                f"messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}")
            pairs.append((m["role"], m["content"]))
        if pairs[-1][0] != "assistant":
            raise DataError(str(path), lineno, "the last message must have role 'assistant'")
        if not any(r == "user" for r, _ in pairs[:-1]):
            raise DataError(str(path), lineno, "no 'user' message before the assistant's reply")
        return Example(messages=tuple(pairs[:-1]), response=pairs[-1][1])
    if "instruction" in obj:
        instr = _text(obj, "instruction", path, lineno)
        extra = _text(obj, "input", path, lineno, required=False)
        out = _text(obj, "output", path, lineno)
        user = f"{instr}\n\n{extra}" if extra.strip() else instr
        return Example(messages=(("user", user),), response=out)
    if "prompt" in obj:
        return Example(messages=(("user", _text(obj, "prompt", path, lineno)),),
                       response=_text(obj, "response", path, lineno))
    raise DataError(str(path), lineno, "unknown format: expected 'instruction'/'output', "
                                       "'messages', or 'prompt'/'response' fields")


def load_examples(path: str | Path) -> list[Example]:
    p = resolve_data_path(str(path))
    out = [parse_example(obj, p, n) for n, obj in json_objects(p)]
    if not out:
        raise DataError(str(p), None, "the file holds no examples")
    return out


def load_eval(path: str | Path) -> list[EvalItem]:
    p = resolve_data_path(str(path))
    items = []
    for n, obj in json_objects(p):
        scope = obj.get("scope", "own")
        if scope not in ("own", "other"):
            raise DataError(str(p), n, f"'scope' must be 'own' or 'other', got {scope!r}")
        key = obj.get("key")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise DataError(str(p), n, "'key' must be a non-empty string when present")
        topic = obj.get("topic")
        body = {k: v for k, v in obj.items() if k not in ("scope", "key", "topic")}
        items.append(EvalItem(parse_example(body, p, n), scope, key,
                              topic if isinstance(topic, str) else None))
    if not items:
        raise DataError(str(p), None, "the file holds no evaluation items")
    return items


def load_prompts(path: str | Path, limit: int | None = None) -> list[PublicPrompt]:
    p = resolve_data_path(str(path))
    out: list[PublicPrompt] = []
    seen: set[str] = set()
    for n, obj in json_objects(p):
        text = obj.get("prompt", obj.get("instruction"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(str(p), n, "field 'prompt' must be a non-empty string")
        pid = obj.get("id", f"p{n}")
        if not isinstance(pid, (str, int)):
            raise DataError(str(p), n, "'id' must be a string or an integer")
        pid = str(pid)
        if pid in seen:
            raise DataError(str(p), n, f"duplicate prompt id {pid!r}")
        seen.add(pid)
        out.append(PublicPrompt(pid, text))
    if not out:
        raise DataError(str(p), None, "the file holds no prompts")
    return out[:limit] if limit is not None else out


def prompt_set_hash(prompts: list[PublicPrompt]) -> str:
    """SHA-256 of the canonical prompt set; bound into every round's spec."""
    canon = json.dumps([[p.id, p.text] for p in prompts], ensure_ascii=False,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()
