"""A client's durable state, so that a crash at any point can be resumed without a second release.

Rules (TESTING.md T28; DESIGN.md §2, "survives a crash and resume"):

- The ledger is charged before anything derived from private data leaves the client. A crash
  after a charge over-counts; it never under-counts.
- The noised release of a round is written here *before* it is sent. A retried round resends
  that exact release and draws no fresh noise (two independent noisings of one value would
  release more than either). A charge with no cached release means nothing left the client, so
  the retry draws its noise under that same charge.
- A DP-SGD result is checkpointed before anything derived from it leaves the client. A charge
  with no checkpoint means the crashed training produced nothing that was released, so the
  retry trains again under that same charge.
- The journal of a round records which of these steps completed, each write atomic (temporary
  file, fsync, rename, fsync of the folder).

Nothing here is pickled: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from privsem import bounded_json
from privsem.errors import StateCorrupted


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Any, *, private: bool = False) -> None:
    """Calls ``write(tmp_path)``, fsyncs the file, renames it over ``path``, fsyncs the folder.
    ``private``: the file is made 0600 and its folder 0700 (a client's state: only its owner
    may read its adapters, candidates, labels and releases)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    if private:
        os.chmod(tmp, 0o600)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any, *, private: bool = False) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, sort_keys=True), encoding="utf-8"),
                 private=private)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


MAX_STATE_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: Path) -> Any:
    """A JSON file of a client's or run's state, bounded in size and depth; StateCorrupted
    naming the file for anything unreadable."""
    try:
        return bounded_json.read_file(path, max_bytes=MAX_STATE_JSON_BYTES, max_depth=32,
                                      allow_nonfinite=True)
    except (OSError, ValueError) as e:
        raise StateCorrupted(f"{path}: cannot be read ({e}); restore it from a backup or start "
                             "a new run folder (the ledger stays as it is)") from None


def params_digest(round: int, backend: str, params: Mapping[str, Any],
                  cohort: Sequence[str] = ()) -> str:
    """What a cached release is only valid for: the round, the back-end, its parameters and the
    cohort. A round re-announced after a crash with another cohort gets fresh noise (and a new
    charge), never the cached release: resending it would let a server difference two sums that
    share every other client's noise (T33)."""
    body = json.dumps({"round": round, "backend": backend, "params": params,
                       "cohort": list(cohort)}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


class ClientStore:
    """``RUN_DIR/state/<client>/``: journal, adapter checkpoints, pseudo-labels, releases."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ journal
    def _journal_path(self, rnd: int) -> Path:
        return self.root / f"round-{rnd}.json"

    def journal(self, rnd: int) -> dict[str, Any]:
        p = self._journal_path(rnd)
        return dict(read_json(p)) if p.exists() else {}

    def journals(self) -> dict[int, dict[str, Any]]:
        """Every round's journal, by round."""
        out = {}
        for p in sorted(self.root.glob("round-*.json")):
            try:
                rnd = int(p.stem.split("-", 1)[1])
            except ValueError:
                continue
            out[rnd] = dict(read_json(p))
        return out

    def note(self, rnd: int, **facts: Any) -> None:
        write_json(self._journal_path(rnd), {**self.journal(rnd), **facts}, private=True)

    # ------------------------------------------------------------------ adapter weights
    def save_adapter(self, model: torch.nn.Module, tag: str) -> Path:
        """The trainable parameters (the LoRA adapter), by name."""
        tensors = {n: p.detach().to("cpu").contiguous().clone()
                   for n, p in model.named_parameters() if p.requires_grad}
        path = self.root / f"adapter-{tag}.safetensors"
        atomic_write(path, lambda p: save_torch(tensors, str(p)), private=True)
        return path

    def has_adapter(self, tag: str) -> bool:
        return (self.root / f"adapter-{tag}.safetensors").exists()

    def load_adapter(self, model: torch.nn.Module, tag: str) -> None:
        path = self.root / f"adapter-{tag}.safetensors"
        try:
            saved = load_torch(str(path))
        except (OSError, ValueError, SafetensorError) as e:
            raise StateCorrupted(f"{path}: not a readable adapter checkpoint ({e})") from None
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if set(saved) != set(params):
            raise StateCorrupted(f"{path}: holds parameters {sorted(set(saved) ^ set(params))[:3]}"
                                 " that do not match the client's adapter (another model or "
                                 "LoRA configuration?)")
        with torch.no_grad():
            for n, p in params.items():
                if saved[n].shape != p.shape:
                    raise StateCorrupted(f"{path}: {n} has shape {tuple(saved[n].shape)}, the "
                                         f"model's is {tuple(p.shape)}")
                p.copy_(saved[n].to(p.dtype))

    # ------------------------------------------------------------------ pseudo-labels
    def save_labels(self, rnd: int, labels: list[dict[str, Any]]) -> None:
        write_json(self.root / f"labels-{rnd}.json", labels, private=True)

    def load_labels(self, rnd: int) -> list[dict[str, Any]]:
        p = self.root / f"labels-{rnd}.json"
        return list(read_json(p)) if p.exists() else []

    # ------------------------------------------------------------------ releases
    def save_release(self, rnd: int, digest: str, noised: np.ndarray,
                     stats: Mapping[str, Any]) -> None:
        """Written before the release leaves the client."""
        arr = np.ascontiguousarray(noised)
        meta = {"round": str(rnd), "digest": digest, "stats": json.dumps(dict(stats))}
        atomic_write(self.root / f"release-{rnd}.safetensors",
                     lambda p: save_np({"release": arr}, str(p), metadata=meta), private=True)

    def save_confidence(self, rnd: int, w: list[float]) -> None:
        """The round's per-prompt confidences as released (before clip and noise; the
        inversion audit rebuilds the clean upload from them)."""
        write_json(self.root / f"confidence-{rnd}.json", w, private=True)

    def save_candidates(self, rnd: int, texts: list[list[str]]) -> None:
        """The round's candidates (client-local, like its labels; the inversion audit reads
        them)."""
        write_json(self.root / f"candidates-{rnd}.json", texts, private=True)

    def load_release(self, rnd: int, digest: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The cached release of round ``rnd`` if it was made under the same parameters."""
        path = self.root / f"release-{rnd}.safetensors"
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="np") as fh:
                meta = fh.metadata() or {}
            arr = load_np(str(path))["release"]
            stats = bounded_json.loads(meta.get("stats", "{}"), max_depth=8, allow_nonfinite=True)
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise StateCorrupted(f"{path}: cached release cannot be read ({e}); it may have "
                                 "been sent, so the client must not release again this round "
                                 "under the same charge") from None
        if meta.get("digest") != digest or meta.get("round") != str(rnd):
            return None
        return arr, stats
