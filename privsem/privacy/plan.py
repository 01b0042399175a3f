"""The privacy plan of a run: noise calibrated once, before any data is touched.

Record level (per client i with N_i examples): Poisson rate q_i = B/N_i, S_i = ⌈epochs·N_i/B⌉
steps per round, σ_i calibrated so that R rounds of ``SelfComposed(PoissonSampled(q_i,
Gaussian(σ_i)), S_i)`` meet the record-level target. Client level: z calibrated so that R
releases of the aggregation back-end's mechanism (Gaussian for ``plaintext``, discrete Gaussian
in zCDP for ``masked``) meet the client-level target; the noise std on the jointly clipped
matrix is z·C with C = clip (default sqrt(P), which never shrinks a matrix of P unit rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dp_accounting import dp_event as ev

from privsem.aggregation import NoisePlan, get_backend
from privsem.config import RunConfig
from privsem.privacy.analysis import calibrate, dpsgd_event


@dataclass(frozen=True)
class ClientPlan:
    client: str
    examples: int
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float  # DP-SGD σ; 0 when record-level DP is off
    record_budget: float  # inf when record-level DP is off (no claim)

    def round_event(self) -> ev.DpEvent:
        if self.noise_multiplier == 0:
            return ev.NonPrivateDpEvent()
        return dpsgd_event(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                           steps=self.steps_per_round)


@dataclass(frozen=True)
class PrivacyPlan:
    rounds: int
    prompts: int
    clip: float
    embedding_noise_multiplier: float  # z; 0 when client-level DP is off
    client_budget: float
    clients: dict[str, ClientPlan]

    placement: str = "local"

    @property
    def embedding_noise_std(self) -> float:
        return self.embedding_noise_multiplier * self.clip

    def noise(self) -> NoisePlan:
        return NoisePlan(noise_multiplier=self.embedding_noise_multiplier, clip=self.clip,
                         placement=self.placement)


def make_plan(cfg: RunConfig, examples: dict[str, int], prompts: int) -> PrivacyPlan:
    R = cfg.rounds
    rp, cp, acc = cfg.privacy.record, cfg.privacy.client, cfg.privacy.accountant
    clients = {}
    sigmas: dict[tuple[float, int], float] = {}  # clients with the same q and steps share σ
    for cid, n in examples.items():
        q = min(1.0, cfg.training.batch_size / n)
        steps = max(1, math.ceil(cfg.training.epochs_per_round * n / cfg.training.batch_size))
        if rp.enabled:
            def event(s: float, q: float = q, total: int = steps * R) -> ev.DpEvent:
                return dpsgd_event(noise_multiplier=s, sample_rate=q, steps=total)

            if (q, steps) not in sigmas:
                sigmas[q, steps] = calibrate(event, target_epsilon=rp.epsilon, delta=rp.delta,
                                             accountant=acc)
            sigma = sigmas[q, steps]
            budget = rp.budget_epsilon
        else:
            sigma, budget = 0.0, math.inf
        clients[cid] = ClientPlan(cid, n, q, steps, sigma, budget)
    clip = cp.clip if cp.clip is not None else math.sqrt(prompts)
    if cp.enabled:
        backend = get_backend(cfg.aggregation.backend)
        z = calibrate(lambda s: backend.planned_event(s, R), target_epsilon=cp.epsilon,
                      delta=cp.delta, accountant=acc)
        cbudget = cp.budget_epsilon
    else:
        z, cbudget = 0.0, math.inf
    return PrivacyPlan(R, prompts, clip, z, cbudget, clients, placement=cp.placement)
