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


def session_id(rnd: int, cohort: Sequence[str], prompt_hash: str, params: dict[str, Any], *,
               run: str) -> str:
    """SHA-256 binding the run's nonce, the round number, cohort, prompt set and parameters.
    Every later message of the round carries it (and the masked back-end's keys, shares and
    signatures are derived from or bound to it), so nothing of another run is accepted."""
    body = json.dumps({"run": run, "round": rnd, "cohort": list(cohort), "prompts": prompt_hash,
                       "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"privsem/session/v2" + body.encode()).hexdigest()


RUN_NONCE_HEX = frozenset("0123456789abcdef")


def new_run_nonce() -> str:
    """A fresh run nonce: 128 bits of OS entropy, hex."""
    from privsem.rng import secret_bytes

    return secret_bytes(16).hex()


def check_run_nonce(run: Any, who: str) -> str:
    """``run`` if it is a nonce (16 to 64 lowercase hex digits); raises ValueError otherwise."""
    if not (isinstance(run, str) and 16 <= len(run) <= 64 and set(run) <= RUN_NONCE_HEX):
        raise ValueError(f"{who}: the run nonce must be 16 to 64 lowercase hex digits, got "
                         f"{str(run)[:80]!r}")
    return run
