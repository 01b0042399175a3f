"""The privacy plan of a run: noise calibrated once, before any data is touched.

Record level (per client i with N_i examples): Poisson rate q_i = B/N_i; the private-data budget
of R rounds is R·⌈epochs·N_i/B⌉ DP-SGD steps, spread over the schedule's training phases (R for
``sequential``, R + 1 for ``mixed``: S_i = ⌈R·⌈epochs·N_i/B⌉ / phases⌉ steps per phase); σ_i is
calibrated so that the phases' ``SelfComposed(PoissonSampled(q_i, Gaussian(σ_i)), S_i)`` meet the
record-level target. Client level: z calibrated so that R
releases of the aggregation back-end's mechanism (Gaussian for ``plaintext``, discrete Gaussian
in zCDP for ``masked``) meet the client-level target; the noise std on the jointly clipped
matrix is z·C with C = clip (default sqrt(P), which never shrinks a matrix of P unit rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dp_accounting import dp_event as ev

from privsem.aggregation import NoisePlan, get_backend
from privsem.config import RunConfig, resolved
from privsem.privacy.analysis import calibrate, dpsgd_event


@dataclass(frozen=True)
class ClientPlan:
    client: str
    examples: int
    sample_rate: float
    steps_per_round: int  # DP-SGD steps of an even phase (the baselines' rounds)
    noise_multiplier: float  # DP-SGD σ; 0 when record-level DP is off
    record_budget: float  # inf when record-level DP is off (no claim)
    phase_steps: tuple[int, ...] = ()  # steps of training phase 1, 2, ... (the ledger charges
    # per phase); empty: every phase has ``steps_per_round``

    def steps(self, phase: int = 1) -> int:
        """DP-SGD steps of training phase ``phase`` (1-based)."""
        if not self.phase_steps:
            return self.steps_per_round
        if not 1 <= phase <= len(self.phase_steps):
            raise ValueError(f"plan of {self.client}: no training phase {phase} (the plan has "
                             f"{len(self.phase_steps)})")
        return self.phase_steps[phase - 1]

    def round_event(self, phase: int = 1) -> ev.DpEvent:
        if self.noise_multiplier == 0:
            return ev.NonPrivateDpEvent()
        return dpsgd_event(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                           steps=self.steps(phase))


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


def phase_split(total: int, phases: int, first_share: float | None,
                final_share: float | None = None) -> tuple[int, ...]:
    """DP-SGD steps per training phase: ``total`` spread evenly (each phase rounded up), or
    with ``first_share`` of them in phase 1 and the rest spread evenly over the others
    (``first_share`` 1: all of them in phase 1, none in the others). ``final_share`` (with
    ``first_share``): that share in the last phase, what is left spread over the phases
    between (none, when the shares add up to 1)."""
    if phases == 1:
        return (max(1, total),)
    if first_share is None:
        return (max(1, math.ceil(total / phases)),) * phases
    if first_share >= 1:
        return (max(1, total),) + (0,) * (phases - 1)
    first = min(total, max(1, round(total * first_share)))
    if final_share is not None:
        final = total - max(first, round(total * (1 - final_share)))  # shares adding to 1: exact
        if phases == 2:
            return (first, total - first)
        middle = total - first - final
        each = math.ceil(middle / (phases - 2)) if middle > 0 else 0
        return (first,) + (each,) * (phases - 2) + (final,)
    rest = max(1, math.ceil((total - first) / (phases - 1)))
    return (first,) + (rest,) * (phases - 1)


def make_plan(cfg: RunConfig, examples: dict[str, int], prompts: int) -> PrivacyPlan:
    R = cfg.rounds
    phases = cfg.training.phases(R)
    rp, cp, acc = cfg.privacy.record, cfg.privacy.client, cfg.privacy.accountant
    clients = {}
    sigmas: dict[tuple[float, int], float] = {}  # clients with the same q and steps share σ
    for cid, n in examples.items():
        q = min(1.0, cfg.training.batch_size / n)
        per_round = max(1, math.ceil(cfg.training.epochs_per_round * n / cfg.training.batch_size))
        share = (resolved(cfg.training.first_phase_share, "training.first_phase_share")
                 if cfg.training.schedule == "mixed" else None)
        split = phase_split(per_round * R, phases, share,
                            cfg.training.final_phase_share if share is not None else None)
        steps = split[0] if len(set(split)) == 1 else max(1, math.ceil(per_round * R / phases))
        if rp.enabled:
            def event(s: float, q: float = q, total: int = sum(split)) -> ev.DpEvent:
                return dpsgd_event(noise_multiplier=s, sample_rate=q, steps=total)

            if (q, sum(split)) not in sigmas:
                sigmas[q, sum(split)] = calibrate(event, target_epsilon=rp.epsilon,
                                                  delta=rp.delta, accountant=acc)
            sigma = sigmas[q, sum(split)]
            budget = rp.budget_epsilon
        else:
            sigma, budget = 0.0, math.inf
        clients[cid] = ClientPlan(cid, n, q, steps, sigma, budget, phase_steps=split)
    # default clip: never shrinks an honest upload (P unit rows; weighted: rows of norm ≤ √2)
    width = 1 if cfg.consensus.confidence == "none" else 2
    clip = cp.clip if cp.clip is not None else math.sqrt(width * prompts)
    if cp.enabled:
        backend = get_backend(cfg.aggregation.backend)
        z = calibrate(lambda s: backend.planned_event(s, R), target_epsilon=cp.epsilon,
                      delta=cp.delta, accountant=acc)
        cbudget = cp.budget_epsilon
    else:
        z, cbudget = 0.0, math.inf
    return PrivacyPlan(R, prompts, clip, z, cbudget, clients, placement=cp.placement)
