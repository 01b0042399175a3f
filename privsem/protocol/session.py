"""Session ids and the round parameters a client checks against its own configuration."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from privsem.aggregation import get_backend
from privsem.confidence import upload_dim
from privsem.config import RunConfig
from privsem.privacy.plan import PrivacyPlan


def expected_params(cfg: RunConfig, plan: PrivacyPlan, *, cohort_size: int, dim: int,
                    public: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """The round parameters every party must agree on (compared exactly, as JSON values),
    including the aggregation back-end's (masking modulus, scale, noise, graph, thresholds;
    for ``ckks`` the digest of the key holder's public context, from ``public``)."""
    backend = get_backend(cfg.aggregation.backend)
    return {
        "backend": cfg.aggregation.backend,
        "clip": plan.clip,
        "embedding_noise_multiplier": plan.embedding_noise_multiplier,
        "selection": cfg.consensus.selection,
        "operator": cfg.consensus.operator,
        "candidates": cfg.generation.candidates,
        "encoder": cfg.embedding.model,
        "confidence": cfg.consensus.confidence,
        "aggregation": backend.round_params(plan.noise(), cohort_size=cohort_size,
                                            length=plan.prompts * upload_dim(
                                                dim, cfg.consensus.confidence),
                                            settings=cfg.aggregation.settings(),
                                            public=public),
    }


def session_id(rnd: int, cohort: Sequence[str], prompt_hash: str, params: dict[str, Any]) -> str:
    """SHA-256 binding the round number, cohort, prompt set and parameters."""
    body = json.dumps({"round": rnd, "cohort": list(cohort), "prompts": prompt_hash,
                       "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"privsem/session/v1" + body.encode()).hexdigest()
