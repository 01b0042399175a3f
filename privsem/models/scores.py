"""Text-overlap scores for evaluation: ROUGE-L by Google's reference implementation
(``rouge-score``), with its Porter stemmer and tokeniser."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 of each answer against its reference (longest common subsequence of
    stemmed tokens). Shape (n,); an empty answer scores 0."""
    if len(answers) != len(references):
        raise ValueError(f"rouge_l: {len(answers)} answers for {len(references)} references; "
                         "give one answer per reference")
    s = _scorer()
    return np.asarray([s.score(ref, ans)["rougeL"].fmeasure
                       for ans, ref in zip(answers, references, strict=True)], dtype=np.float64)
