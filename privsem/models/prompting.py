"""Turning conversations into token ids: the model's chat template where it has one, else plain.

Plain format: ``Question: …\\nAnswer:`` with the reply after a space. Training labels cover the
reply (and the end-of-sequence token) only; the prompt's positions are ignored (-100).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

Messages = Sequence[tuple[str, str]]


def resolve_format(tokenizer: PreTrainedTokenizerBase, requested: str) -> str:
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_chat:
        raise ValueError("prompt_format 'chat' asked for, but the tokenizer has no chat template; "
                         "use 'auto' or 'plain'")
    if requested == "auto":
        return "chat" if has_chat else "plain"
    return requested


def prompt_text(tokenizer: PreTrainedTokenizerBase, fmt: str, messages: Messages) -> str:
    if fmt == "chat":
        msgs = [{"role": r, "content": c} for r, c in messages]
        out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return str(out)
    parts = []
    for role, content in messages:
        if role == "system":
            parts.append(f"{content}\n\n")
        elif role == "user":
            parts.append(f"Question: {content}\n")
        else:
            parts.append(f"Answer: {content}\n")
    parts.append("Answer:")
    return "".join(parts)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, fmt: str, messages: Messages) -> list[int]:
    text = prompt_text(tokenizer, fmt, messages)
    # A chat template writes its own special tokens; plain text gets the tokenizer's BOS if any.
    ids = tokenizer(text, add_special_tokens=(fmt == "plain"))["input_ids"]
    return list(ids)


def response_ids(tokenizer: PreTrainedTokenizerBase, fmt: str, response: str) -> list[int]:
    text = response if fmt == "chat" else " " + response
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
