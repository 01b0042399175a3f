"""Batched, seeded generation of candidates for the public prompts and answers for evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from privsem.models.prompting import Messages, ensure_pad_token, prompt_ids


def clean_completion(text: str, fmt: str) -> str:
    """Strips whitespace; in the plain format, cuts where a base model starts a new turn."""
    if fmt == "plain":
        text = text.split("\nQuestion:", 1)[0]
    return text.strip()


@torch.no_grad()
def generate(model: Any, tokenizer: PreTrainedTokenizerBase, fmt: str,
             conversations: Sequence[Messages], *, k: int, max_new_tokens: int,
             temperature: float, top_p: float, batch_size: int, seed: int,
             sample: bool = True) -> list[list[str]]:
    """``k`` completions per conversation (greedy when ``sample`` is false; then k must be 1).

    Deterministic under ``seed``: sampling draws from torch's generator inside a forked RNG
    state, so the caller's RNG state is untouched. Returns texts, special tokens removed.
    """
    if not sample and k != 1:
        raise ValueError("greedy generation gives one completion per prompt; use k=1")
    ensure_pad_token(tokenizer)
    pad = int(tokenizer.pad_token_id)
    model.eval()
    out: list[list[str]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed & ((1 << 63) - 1))
        for start in range(0, len(conversations), batch_size):
            chunk = [prompt_ids(tokenizer, fmt, m) for m in conversations[start:start + batch_size]]
            width = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # left padding
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, c in enumerate(chunk):
                ids[i, width - len(c):] = torch.tensor(c)
                att[i, width - len(c):] = 1
            kwargs: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
                          "num_return_sequences": k} if sample else {"do_sample": False}
            gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, **kwargs)  # (len(chunk)·k, width + new)
            texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            for i in range(len(chunk)):
                out.append([clean_completion(t, fmt) for t in texts[i * k:(i + 1) * k]])
    return out
