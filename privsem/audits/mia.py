"""Membership-inference scores of a causal LM on prompt/response examples.

Every score is "higher = more likely a training member", ready for :mod:`privsem.audits.metrics`
and :mod:`privsem.audits.one_run`. All three are computed from the per-example loss that
training uses (:func:`privsem.models.training.per_sample_loss`: mean token cross-entropy of the
reply, and its end-of-sequence token, given the prompt, formatted by
:mod:`privsem.models.prompting`), so the attack sees exactly the quantity training lowered.

- loss attack (Yeom, Giacomelli, Fredrikson and Jha 2018): ``score = −loss``.
- zlib attack (Carlini et al. 2021, "Extracting Training Data from Large Language Models",
  USENIX Security, §5.1): ``score = −loss / zlib_bytes``, ``zlib_bytes`` the length of the
  zlib-compressed (level 9) UTF-8 reply, the text whose loss is measured. Carlini et al. rank
  by the ratio of log-perplexity to zlib entropy; we negate it so that higher means member.
- reference-model attack (Carlini et al. 2021 §5.1 "comparing to other neural language models";
  the calibrated attack of Watson et al. 2022 and Mireshghallah et al. 2022):
  ``score = loss_reference − loss_target``, the reference being e.g. the base model before the
  client's fine-tuning (for a peft model: ``with model.disable_adapter():``).

Losses are computed batched under ``torch.no_grad`` with the model in eval mode (dropout off);
the model's previous train/eval mode is restored afterwards. Same model, same examples, same
numbers.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from privsem.data import Example
from privsem.models.prompting import resolve_format
from privsem.models.training import encode_examples, per_sample_loss


def example_losses(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                   examples: Sequence[Example], *, prompt_format: str = "auto",
                   max_length: int = 256, batch_size: int = 16) -> np.ndarray:
    """Mean token NLL of each example's reply under ``model``, shape (n,), float64.

    Examples are encoded as in training (:func:`encode_examples`, at most ``max_length``
    tokens); an example whose reply is cut off entirely raises ValueError, since its loss would
    read as 0 (a certain "member")."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} is not valid; use an integer >= 1")
    if not examples:
        return np.zeros(0, dtype=np.float64)
    fmt = resolve_format(tokenizer, prompt_format)
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                chunk = examples[start:start + batch_size]
                ids, att, lab = encode_examples(tokenizer, fmt, chunk, max_length).tensors
                empty = torch.nonzero((lab[:, 1:] != -100).sum(1) == 0).flatten().tolist()
                if empty:
                    raise ValueError(f"example {start + empty[0]}: its reply has no token within "
                                     f"max_length={max_length}; raise max_length")
                out.extend(per_sample_loss(model, ids, att, lab).tolist())  # (B,)
    finally:
        model.train(was_training)
    return np.asarray(out, dtype=np.float64)


def zlib_bytes(text: str) -> int:
    """Length in bytes of ``zlib.compress(text.encode("utf-8"), 9)``."""
    return len(zlib.compress(text.encode("utf-8"), 9))


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """Loss attack: ``−loss``."""
    return -np.asarray(losses, dtype=np.float64)


def zlib_scores(losses: np.ndarray, examples: Sequence[Example]) -> np.ndarray:
    """zlib attack: ``−loss / zlib_bytes(reply)``."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.shape != (len(examples),):
        raise ValueError(f"losses: shape {losses.shape} does not match {len(examples)} examples")
    z = np.array([zlib_bytes(ex.response) for ex in examples], dtype=np.float64)
    return -losses / z


def reference_scores(target_losses: np.ndarray, reference_losses: np.ndarray) -> np.ndarray:
    """Reference-model attack: ``loss_reference − loss_target``."""
    t = np.asarray(target_losses, dtype=np.float64)
    r = np.asarray(reference_losses, dtype=np.float64)
    if t.shape != r.shape:
        raise ValueError(f"reference_losses: shape {r.shape} does not match target {t.shape}")
    return r - t


@dataclass(frozen=True)
class MiaScores:
    """Per-example scores of the three attacks (higher = member); ``reference`` is None when no
    reference model was given."""

    target_loss: np.ndarray  # (n,)
    loss: np.ndarray  # (n,)
    zlib: np.ndarray  # (n,)
    reference: np.ndarray | None  # (n,)

    def attacks(self) -> dict[str, np.ndarray]:
        out = {"loss": self.loss, "zlib": self.zlib}
        if self.reference is not None:
            out["reference"] = self.reference
        return out

    def to_json(self) -> dict[str, Any]:
        return {"target_loss": self.target_loss.tolist(), "loss": self.loss.tolist(),
                "zlib": self.zlib.tolist(),
                "reference": None if self.reference is None else self.reference.tolist()}


def mia_scores(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
               examples: Sequence[Example], *, reference_model: torch.nn.Module | None = None,
               reference_tokenizer: PreTrainedTokenizerBase | None = None,
               prompt_format: str = "auto", max_length: int = 256, batch_size: int = 16
               ) -> MiaScores:
    """The loss, zlib and (with ``reference_model``) reference attacks' scores on
    ``examples``. ``reference_tokenizer`` defaults to ``tokenizer``."""
    target = example_losses(model, tokenizer, examples, prompt_format=prompt_format,
                            max_length=max_length, batch_size=batch_size)
    ref = None
    if reference_model is not None:
        ref_losses = example_losses(reference_model, reference_tokenizer or tokenizer, examples,
                                    prompt_format=prompt_format, max_length=max_length,
                                    batch_size=batch_size)
        ref = reference_scores(target, ref_losses)
    return MiaScores(target_loss=target, loss=loss_scores(target),
                     zlib=zlib_scores(target, examples), reference=ref)
