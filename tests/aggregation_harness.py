"""A transport-free harness for aggregation rounds: one spec, n clients, one server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privsem.aggregation import ClientContext, NoisePlan, get_backend, run_exchanges
from privsem.aggregation.masked.crypto import Identity
from privsem.config import MaskedConfig
from privsem.protocol.messages import RoundSpec
from privsem.protocol.session import session_id
from privsem.rng import SeededRandomness


@dataclass
class Round:
    backend: Any
    spec: RoundSpec
    identities: dict[str, Identity]
    registry: dict[str, bytes]
    clients: dict[str, Any]
    server: Any
    params: dict[str, Any]
    helpers: dict[str, Any] = field(default_factory=dict)
    public: dict[str, bytes] = field(default_factory=dict)
    first: dict[str, bytes] = field(default_factory=dict)

    def tolerance(self, contributors: int) -> float:
        """The back-end's stated bound on |total − exact sum| per entry (0: bit for bit)."""
        if "ckks" not in self.params:
            return 0.0
        from privsem.aggregation.ckks.params import CkksParams
        return CkksParams.from_json(self.params["ckks"]).tolerance(contributors)

    def responders(self) -> dict[str, Callable[[bytes], bytes | None]]:
        out: dict[str, Callable[[bytes], bytes | None]] = {
            c: a.respond for c, a in self.clients.items()}
        out.update({h: p.respond for h, p in self.helpers.items()})
        return out

    def start(self, inputs: dict[str, np.ndarray]) -> None:
        self.first = {c: self.clients[c].start(inputs[c]) for c in inputs}

    def run(self, drop: Callable[[str, str], bool] = lambda c, s: False) -> dict[str, str]:
        return run_exchanges(self.server, self.responders(), self.first, drop=drop)


def make_round(backend: str = "masked", *, n: int = 5, prompts: int = 3, dim: int = 8,
               noise_multiplier: float = 0.0, clip: float = 2.0, rnd: int = 1,
               settings: Any = None, placement: str = "local",
               seed: int = 0, run: str = "0" * 32) -> Round:
    be = get_backend(backend)
    ids = tuple(f"c{i:03d}" for i in range(n))
    if settings is None:
        settings = MaskedConfig() if backend == "masked" else None
    noise = NoisePlan(noise_multiplier=noise_multiplier, clip=clip, placement=placement)
    parties = be.start_run(noise, cohort=ids, prompts=prompts, dim=dim, settings=settings,
                           randomness=SeededRandomness(seed, "helpers"))
    public = dict(parties.public)
    params = be.round_params(noise, cohort_size=n, length=prompts * dim, settings=settings,
                             public=public)
    full = {"aggregation": params}
    spec = RoundSpec(round=rnd, run=run, session_id=session_id(rnd, ids, "h", full, run=run),
                     cohort=ids,
                     prompt_ids=tuple(f"p{i}" for i in range(prompts)), prompt_set_hash="h",
                     dim=dim, params=full)
    identities = {c: Identity() for c in ids}
    registry = {c: i.public for c, i in identities.items()}
    clients = {c: be.client(ClientContext(spec=spec, client_id=c,
                                          randomness=SeededRandomness(seed, c),
                                          identity=identities[c], registry=registry,
                                          public=public))
               for c in ids}
    return Round(be, spec, identities, registry, clients, be.server(spec, registry, public),
                 params, dict(parties.helpers), public)


def grid_inputs(r: Round, *, seed: int = 0, spread: float = 0.5) -> dict[str, np.ndarray]:
    """Inputs on the grid k/2^10: exact in float32 (plaintext) and on the masked back-end's
    fixed-point grid (its scale is a power of two ≥ 2^10 here), Frobenius norm within the clip."""
    rng = np.random.default_rng(seed)
    P, d = len(r.spec.prompt_ids), r.spec.dim
    scale = 2.0 ** 10
    clip = r.params["clip"]
    out = {}
    for c in r.spec.cohort:
        x = rng.uniform(-spread, spread, (P, d))
        x *= min(1.0, 0.999 * clip / np.linalg.norm(x))
        out[c] = np.round(x * scale) / scale
    return out
