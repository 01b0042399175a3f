"""Data: instruction-format JSONL loaders, the public prompt set and the shipped demo federation."""

from privsem.data.jsonl import (
    EvalItem,
    Example,
    PublicPrompt,
    load_eval,
    load_examples,
    load_prompts,
    prompt_set_hash,
    resolve_data_path,
)

__all__ = [
    "EvalItem",
    "Example",
    "PublicPrompt",
    "load_eval",
    "load_examples",
    "load_prompts",
    "prompt_set_hash",
    "resolve_data_path",
]
