"""Privacy analysis: DP events, ε from events, and calibration of noise to a target (ε, δ).

Pure functions only; state lives in :mod:`privsem.privacy.ledger`. Every release is a
``dp_accounting`` event, never a loose ``(sigma, q, steps)`` tuple:

- DP-SGD (Abadi et al. 2016): ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``.
- Embedding release: ``Gaussian(z)`` per round for the jointly clipped (P × d) matrix with noise
  std ``z·C`` (sensitivity C under add/remove of one client).
- Accountants: RDP (Mironov 2017; Mironov, Talwar, Zhang 2019 for the sampled Gaussian) and PLD
  (Meiser & Mohammadi 2018; Doroshenko et al. 2022), both from ``dp_accounting``.

Calibration builds a fresh accountant for every trial value (``calibrate_dp_mechanism``) and then
*verifies* the result: the returned noise never gives ε above the target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import dp_accounting
from dp_accounting import dp_event as ev
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

ACCOUNTANTS = ("rdp", "pld")


def make_accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    # dp_accounting logs a warning when its series for a fractional RDP order fails to converge
    # (small σ) and drops that order: the bound stays valid (fewer orders can only raise ε).
    logging.getLogger("absl").setLevel(logging.ERROR)
    if kind == "rdp":
        return rdp_privacy_accountant.RdpAccountant()
    if kind == "pld":
        return pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {kind!r}")


def dpsgd_event(*, noise_multiplier: float, sample_rate: float, steps: int) -> ev.DpEvent:
    """DP-SGD with Poisson sampling at rate q = B/N, per-sample clipping, Gaussian noise σ·C."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"dpsgd_event: sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise ValueError(f"dpsgd_event: steps must be >= 0, got {steps}")
    if steps == 0:
        return ev.NoOpDpEvent()
    if noise_multiplier <= 0:
        return ev.NonPrivateDpEvent()
    step = ev.PoissonSampledDpEvent(sample_rate, ev.GaussianDpEvent(noise_multiplier))
    return ev.SelfComposedDpEvent(step, steps)


def gaussian_event(*, noise_multiplier: float, count: int = 1) -> ev.DpEvent:
    """``count`` Gaussian releases with noise std = noise_multiplier × L2 sensitivity."""
    if count < 0:
        raise ValueError(f"gaussian_event: count must be >= 0, got {count}")
    if count == 0:
        return ev.NoOpDpEvent()
    if noise_multiplier <= 0:
        return ev.NonPrivateDpEvent()
    g = ev.GaussianDpEvent(noise_multiplier)
    return g if count == 1 else ev.SelfComposedDpEvent(g, count)


def effective_accountant(kind: str, event: ev.DpEvent) -> str:
    """``kind``, or ``"rdp"`` where the PLD accountant has no representation of ``event``.

    zCDP events (the discrete Gaussian of the masked back-end) have no privacy-loss
    distribution in ``dp_accounting``; RDP composes them exactly (ρ-zCDP is RDP α·ρ at every
    order α) and gives a valid, if slightly looser, (ε, δ).
    """
    if kind == "pld" and not make_accountant("pld").supports(event):
        return "rdp"
    return kind


def epsilon(events: Sequence[ev.DpEvent], *, delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the composition of ``events``; ``inf`` if any release is non-private."""
    if not 0 < delta < 1:
        raise ValueError(f"epsilon: delta must be in (0, 1), got {delta}")
    events = [e for e in events if not isinstance(e, ev.NoOpDpEvent)]
    if not events:
        return 0.0
    if any(isinstance(e, ev.NonPrivateDpEvent) for e in events):
        return math.inf
    composed = events[0] if len(events) == 1 else ev.ComposedDpEvent(list(events))
    kind = effective_accountant(accountant, composed)
    acc = make_accountant(kind)
    if not acc.supports(composed):
        raise dp_accounting.UnsupportedEventError(
            f"the {kind} accountant does not support event {composed!r}")
    acc.compose(composed)
    eps = float(acc.get_epsilon(delta))
    return max(eps, 0.0)


def calibrate(make_event: Callable[[float], ev.DpEvent], *, target_epsilon: float,
              delta: float, accountant: str = "rdp", tol: float = 1e-5) -> float:
    """Smallest noise multiplier (within ``tol``) whose event has ε ≤ ``target_epsilon``.

    Never overshoots: the returned value is checked with a fresh accountant and nudged upwards
    until ε(result) ≤ target.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"calibrate: target_epsilon must be finite and > 0, got {target_epsilon}")
    kind = effective_accountant(accountant, make_event(1.0))
    sigma = float(dp_accounting.calibrate_dp_mechanism(
        lambda: make_accountant(kind), make_event, target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=tol))
    for _ in range(1000):
        if epsilon([make_event(sigma)], delta=delta, accountant=accountant) <= target_epsilon:
            return sigma
        sigma += tol
    raise RuntimeError("calibrate: could not find a noise multiplier meeting the target")


# ---------------------------------------------------------------------------------------------
# Events as JSON (for the ledger and messages). Only the event types privsem emits.

def event_to_json(e: ev.DpEvent) -> dict[str, Any]:
    if isinstance(e, ev.GaussianDpEvent):
        return {"type": "gaussian", "noise_multiplier": e.noise_multiplier}
    if isinstance(e, ev.PoissonSampledDpEvent):
        return {"type": "poisson_sampled", "sampling_probability": e.sampling_probability,
                "event": event_to_json(e.event)}
    if isinstance(e, ev.SelfComposedDpEvent):
        return {"type": "self_composed", "count": e.count, "event": event_to_json(e.event)}
    if isinstance(e, ev.ComposedDpEvent):
        return {"type": "composed", "events": [event_to_json(x) for x in e.events]}
    if isinstance(e, ev.ZCDpEvent):
        return {"type": "zcdp", "rho": e.rho, "xi": e.xi}
    if isinstance(e, ev.NoOpDpEvent):
        return {"type": "no_op"}
    if isinstance(e, ev.NonPrivateDpEvent):
        return {"type": "non_private"}
    raise ValueError(f"event_to_json: unsupported event {e!r}")


def event_from_json(d: dict[str, Any]) -> ev.DpEvent:
    t = d.get("type")
    if t == "gaussian":
        return ev.GaussianDpEvent(float(d["noise_multiplier"]))
    if t == "poisson_sampled":
        return ev.PoissonSampledDpEvent(float(d["sampling_probability"]),
                                        event_from_json(d["event"]))
    if t == "self_composed":
        return ev.SelfComposedDpEvent(event_from_json(d["event"]), int(d["count"]))
    if t == "composed":
        return ev.ComposedDpEvent([event_from_json(x) for x in d["events"]])
    if t == "zcdp":
        return ev.ZCDpEvent(float(d["rho"]), float(d.get("xi", 0.0)))
    if t == "no_op":
        return ev.NoOpDpEvent()
    if t == "non_private":
        return ev.NonPrivateDpEvent()
    raise ValueError(f"event_from_json: unknown event type {t!r}")
