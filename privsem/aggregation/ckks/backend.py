"""The ``ckks`` back-end: clients encrypt, the aggregator adds, a separate key holder decrypts.

Roles (DESIGN.md §3; threat model ``threat_models/ckks.md``):

- **Key holder** (:class:`KeyHolderParty`, the helper party ``key-holder``): created once per
  run by :meth:`CkksBackend.start_run`; it alone holds the secret key. Its public context and
  parameters are handed to every party before the first round (like the registry of identity
  keys) and the context's SHA-256 is bound into the round parameters, so a party holding
  another context refuses the round.
- **Clients** (:class:`CkksClient`): add the full Gaussian noise locally (placement ``local``:
  the client-level guarantee holds even if aggregator and key holder collude), clamp the
  noised entries to ``value_bound`` (post-processing), and encrypt the matrix with its count
  slot under the public context.
- **Aggregator** (:class:`CkksAggregator`, the server's side): validates every upload against
  the public context (T36; a bad one excludes its client), adds the valid ones without any
  secret key (T37), and sends the encrypted sum with its contributor list to the key holder,
  which decrypts it once, floods, rounds and releases it (T38).

Stages of the exchange: ``upload`` (clients → aggregator) and ``decrypt`` (aggregator → key
holder → aggregator). A client that never uploads is absent from the sum; fewer valid uploads
than ``min_contributors`` abort the round before anything is decrypted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import tenseal as ts
from dp_accounting import dp_event as ev

from privsem import bounded_json
from privsem.aggregation.base import (
    AggregateResult,
    AggregationBackend,
    ClientAggregator,
    ClientContext,
    NoisePlan,
    RunParties,
    ServerAggregator,
    UploadInbox,
)
from privsem.aggregation.ckks import he
from privsem.aggregation.ckks.keyholder import KeyHolder, KeyHolderRefusal
from privsem.aggregation.ckks.params import CkksParams
from privsem.errors import MessageError, ProtocolAbort
from privsem.privacy.analysis import gaussian_event
from privsem.protocol.messages import (
    AggregateRelease,
    CkksUpload,
    DecryptRequest,
    RoundSpec,
    decode,
    encode,
)
from privsem.rng import Randomness

KEY_HOLDER = "key-holder"  # the helper party's id in the exchange
CONTEXT = "ckks/context"  # RunParties.public: the key holder's public context
PARAMS = "ckks/params"  # RunParties.public: the parameters it was made for (JSON)
UPLOAD, DECRYPT, DONE = "upload", "decrypt", "done"


def min_contributors(fraction: float, cohort_size: int) -> int:
    """The configured fraction of the cohort, at least 2 (one contributor's sum is its upload)."""
    return min(cohort_size, max(2, math.ceil(fraction * cohort_size - 1e-9)))


def derive_params(noise: NoisePlan, *, cohort_size: int, prompts: int, dim: int,
                  settings: Any) -> CkksParams:
    """The CKKS parameters of a run from its noise plan and ``aggregation.ckks`` section.

    ``value_bound`` = clip · (1 + value_bound_sigmas · z): a clipped entry is at most the clip,
    its noise is z · clip per entry; clients clamp beyond it. ``min_contributors`` is the
    configured fraction of the cohort, at least 2. Raises ValueError (security table, overflow,
    slots) naming the fix."""
    if settings is None:
        from privsem.config import CkksConfig
        settings = CkksConfig()
    return CkksParams(
        prompts=prompts, dim=dim, cohort_size=cohort_size,
        value_bound=noise.clip * (1.0 + settings.value_bound_sigmas * noise.noise_multiplier),
        poly_modulus_degree=settings.poly_modulus_degree,
        coeff_mod_bit_sizes=tuple(settings.coeff_mod_bit_sizes),
        scale_bits=settings.scale_bits, flood_std=settings.flood_std,
        grid_bits=settings.grid_bits,
        min_contributors=min_contributors(settings.min_contributors, cohort_size))


def _round_params(spec: RoundSpec) -> tuple[CkksParams, dict[str, Any]]:
    a = spec.params.get("aggregation", {})
    try:
        p = CkksParams.from_json(a["ckks"])
        _ = (a["context_digest"], float(a["noise_multiplier"]), float(a["clip"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolAbort(f"ckks: round parameters are incomplete or invalid ({e})") from None
    if p.prompts != len(spec.prompt_ids) or p.dim != spec.dim:
        raise ProtocolAbort(f"ckks: parameters for a ({p.prompts}, {p.dim}) matrix, the round "
                            f"has ({len(spec.prompt_ids)}, {spec.dim})")
    return p, a


def _public_context(spec: RoundSpec, public: Mapping[str, bytes] | None,
                    party: str) -> tuple[CkksParams, dict[str, Any], ts.Context]:
    p, a = _round_params(spec)
    if not public or CONTEXT not in public:
        raise ProtocolAbort(f"ckks: {party} holds no public context of the key holder; hand "
                            "every party the run's RunParties.public before the first round")
    return p, a, he.load_public_context(public[CONTEXT], p, expected_digest=a["context_digest"])


class CkksClient(ClientAggregator):
    mechanism = "embedding_gaussian"

    def __init__(self, ctx: ClientContext) -> None:
        self.ctx = ctx
        self.p, a, self._he = _public_context(ctx.spec, ctx.public, f"client {ctx.client_id}")
        self.z, self.clip = float(a["noise_multiplier"]), float(a["clip"])
        self.stats: dict[str, Any] = {"noise_std": self.z * self.clip,
                                      "context_digest": a["context_digest"]}

    def release_event(self) -> tuple[ev.DpEvent, dict[str, Any]]:
        return gaussian_event(noise_multiplier=self.z), {
            "noise_multiplier": self.z, "clip": self.clip, "noise_std": self.z * self.clip}

    def add_noise(self, clipped: np.ndarray) -> np.ndarray:
        noisy = clipped + self.ctx.randomness.gaussian(clipped.shape, self.z * self.clip)
        vb = self.p.value_bound
        self.stats["clamped_entries"] = int(np.count_nonzero(np.abs(noisy) > vb))
        return np.clip(noisy, -vb, vb).astype(np.float64)  # post-processing of the release

    def send(self, noised: np.ndarray) -> bytes:
        s = self.ctx.spec
        parts = he.encrypt_upload(self._he, noised, self.p)
        self.stats["ciphertexts"] = len(parts)
        return encode(CkksUpload(session_id=s.session_id, round=s.round,
                                 client=self.ctx.client_id, ciphertexts=parts))

    def respond(self, request: bytes) -> bytes | None:
        raise ProtocolAbort(f"client {self.ctx.client_id}: the ckks back-end sends clients no "
                            "requests after the upload")


class CkksAggregator(ServerAggregator):
    """The server's side: validates and adds ciphertexts; never holds a secret key."""

    def __init__(self, spec: RoundSpec, public: Mapping[str, bytes] | None) -> None:
        self.spec = spec
        self.p, a, self._he = _public_context(spec, public, "the aggregator")
        self.context_digest = a["context_digest"]
        self.key_holder = str(a.get("key_holder", KEY_HOLDER))
        self._top = he.top_parms_id(self._he)
        self.stage = UPLOAD
        self._inbox = UploadInbox(spec, CkksUpload)  # accepted: client -> its loaded vectors
        self._requested: tuple[str, ...] = ()
        self._release: np.ndarray | None = None
        self._release_error: str | None = None
        self._bytes = {"uploads": 0, "request": 0, "release": 0}

    def receive(self, client: str, payload: bytes) -> None:
        if self.stage == DECRYPT and client == self.key_holder:
            self._receive_release(payload)
            return
        if not self._inbox.closed:
            self._bytes["uploads"] += len(payload)
        up = self._inbox.take(client, payload)
        if up is None:
            return
        try:
            self._inbox.accepted[client] = he.load_upload(self._he, up.ciphertexts, self.p,
                                                          self._top)
        except ProtocolAbort as e:  # CiphertextError: the client is excluded (T36)
            self._inbox.reject(client, str(e))

    def _receive_release(self, payload: bytes) -> None:
        """The key holder's answer; a bad one is recorded and :meth:`finish` refuses."""
        self._bytes["release"] += len(payload)
        try:
            rel = decode(payload, AggregateRelease)
        except MessageError as e:
            self._release_error = f"the key holder's release is malformed ({e})"
            return
        shape = (self.p.prompts, self.p.dim)
        if (rel.session_id != self.spec.session_id or rel.round != self.spec.round
                or rel.contributors != self._requested):
            self._release_error = ("the key holder released the aggregate of another round or "
                                   "of other contributors than requested")
        elif rel.total.shape != shape or not np.all(np.isfinite(rel.total)):
            self._release_error = f"the key holder's release is not a finite {shape} matrix"
        elif self._release is not None:
            self._release_error = "the key holder released twice in one round"
        else:
            self._release = rel.total.astype(np.float64)

    def next_requests(self) -> dict[str, bytes]:
        if self.stage == UPLOAD:
            self.stage = DECRYPT
            self._inbox.close()
            members = self._inbox.members()
            if len(members) < self.p.min_contributors:
                self.stage = DONE
                raise ProtocolAbort(f"ckks: {len(members)} valid upload(s), below the minimum "
                                    f"of {self.p.min_contributors} contributors; nothing is "
                                    "decrypted")
            total = he.add_uploads([self._inbox.accepted[c] for c in members])
            self._requested = members
            frame = encode(DecryptRequest(session_id=self.spec.session_id,
                                          round=self.spec.round, contributors=members,
                                          ciphertexts=total))
            self._bytes["request"] = len(frame)
            return {self.key_holder: frame}
        self.stage = DONE
        return {}

    def finish(self) -> AggregateResult:
        if self._release_error is not None:
            raise ProtocolAbort(f"ckks: {self._release_error}; nothing is released")
        if self._release is None:
            raise ProtocolAbort("ckks: the key holder released no aggregate this round (it "
                                "refused or went silent); nothing is released")
        p, n = self.p, len(self._requested)
        z, clip = (float(self.spec.params["aggregation"][k]) for k in ("noise_multiplier", "clip"))
        grid = 2.0 ** -p.grid_bits
        return AggregateResult(
            total=self._release, contributors=self._requested,
            # the clients' Gaussian noise, the flooding noise and the rounding (uniform on the
            # grid); clamping only shrinks the first
            noise_variance=n * (z * clip) ** 2 + p.flood_std ** 2 + grid ** 2 / 12,
            individual=None, rejected=dict(self._inbox.rejected),
            dropped=tuple(c for c in self._inbox.rejected if c not in self._requested),
            detail={"context_digest": self.context_digest, "key_holder": self.key_holder,
                    "tolerance": p.tolerance(n), "bytes": dict(self._bytes)})


class KeyHolderParty:
    """The key holder as a party of the exchange: answers a :class:`DecryptRequest` with the
    :class:`AggregateRelease` of :meth:`KeyHolder.decrypt_aggregate`, or refuses (raises
    :class:`KeyHolderRefusal`, releasing nothing). ``seen`` records every request it got.
    Pickling it fails on the :class:`KeyHolder` it holds."""

    def __init__(self, holder: KeyHolder) -> None:
        self.holder = holder
        self.seen: list[dict[str, Any]] = []

    def respond(self, request: bytes) -> bytes:
        try:
            msg = decode(request, DecryptRequest)
        except MessageError as e:
            raise KeyHolderRefusal(f"key holder: malformed decryption request ({e})") from None
        entry: dict[str, Any] = {"round": msg.round, "contributors": list(msg.contributors),
                                 "bytes": len(request)}
        self.seen.append(entry)
        try:
            total = self.holder.decrypt_aggregate(round=msg.round, ciphertexts=msg.ciphertexts,
                                                  contributors=msg.contributors)
        except ProtocolAbort as e:
            entry["refused"] = str(e)
            raise
        entry["released"] = True
        return encode(AggregateRelease(session_id=msg.session_id, round=msg.round,
                                       contributors=msg.contributors, total=total))


class CkksBackend(AggregationBackend):
    name = "ckks"
    reveals_individual = False
    has_helpers = True  # the key holder

    def start_run(self, noise: NoisePlan, *, cohort: tuple[str, ...], prompts: int, dim: int,
                  settings: Any, randomness: Randomness) -> RunParties:
        if noise.placement != "local":
            raise ValueError("ckks: only local noise placement is supported (each client adds "
                             "the full noise); use privacy.client.placement: local")
        if KEY_HOLDER in cohort:
            raise ValueError(f"ckks: {KEY_HOLDER!r} is the key holder's id; rename that client")
        p = derive_params(noise, cohort_size=len(cohort), prompts=prompts, dim=dim,
                          settings=settings)
        holder = KeyHolder(p, randomness, cohort)
        public = {CONTEXT: holder.public_context(),
                  PARAMS: json.dumps(p.to_json(), sort_keys=True).encode()}
        return RunParties(public=public, helpers={KEY_HOLDER: KeyHolderParty(holder)})

    def round_params(self, noise: NoisePlan, *, cohort_size: int, length: int,
                     settings: Any, public: Mapping[str, bytes] | None = None
                     ) -> dict[str, Any]:
        if noise.placement != "local":
            raise ValueError("ckks: only local noise placement is supported; use "
                             "privacy.client.placement: local")
        if not public or CONTEXT not in public or PARAMS not in public:
            raise ValueError("ckks: the round needs the key holder's public context and "
                             "parameters (RunParties.public of start_run); this party has none")
        try:
            announced = CkksParams.from_json(bounded_json.loads(public[PARAMS], max_depth=4))
        except ValueError as e:
            raise ValueError(f"ckks: the key holder's announced parameters are invalid ({e})"
                             ) from None
        own = derive_params(noise, cohort_size=announced.cohort_size, prompts=announced.prompts,
                            dim=announced.dim, settings=settings)
        if announced != own:
            raise ValueError(f"ckks: the key holder announced parameters {announced.to_json()}, "
                             f"this party's configuration gives {own.to_json()}")
        if announced.prompts * announced.dim != length or cohort_size > announced.cohort_size:
            raise ValueError(f"ckks: the key holder's context serves {announced.cohort_size} "
                             f"clients × {announced.prompts * announced.dim} values, the round "
                             f"has {cohort_size} × {length}")
        return {"noise_multiplier": noise.noise_multiplier, "clip": noise.clip,
                "ckks": announced.to_json(), "context_digest": he.digest(public[CONTEXT]),
                "key_holder": KEY_HOLDER}

    def planned_event(self, noise_multiplier: float, count: int) -> ev.DpEvent:
        return gaussian_event(noise_multiplier=noise_multiplier, count=count)

    def client(self, ctx: ClientContext) -> ClientAggregator:
        return CkksClient(ctx)

    def server(self, spec: RoundSpec, registry: Mapping[str, bytes],
               public: Mapping[str, bytes] | None = None) -> ServerAggregator:
        return CkksAggregator(spec, public)
