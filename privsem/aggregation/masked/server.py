"""The server of the masked protocol: routes messages, learns only the survivors' sum.

Stages: advertise (U1: valid signed keys) → share (U2: clients whose encrypted shares reached
every neighbour) → input (U3: masked inputs, minus any client a survivor excluded) →
consistency (U4: signatures over U3, optional) → unmask. Below ``min_survivors`` at any stage
the round aborts with no aggregate (TESTING.md T4). The sum is the modular sum of the U3 inputs,
minus each survivor's self-mask (its seed rebuilt from t shares and checked against its
commitment) and minus the pairwise masks of each dropped client with its surviving neighbours
(its mask key rebuilt from t shares and checked against its public key). Every message is
validated on receipt; a bad one excludes its sender, never enters the sum.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from privsem.aggregation.base import AggregateResult, ServerAggregator, envelope_problem
from privsem.aggregation.masked import shamir
from privsem.aggregation.masked.client import (
    MASK_KEY,
    SELF_MASK,
    keys_transcript,
    pair_sign,
    params_from_spec,
    self_mask_commitment,
    share_point,
    survivors_transcript,
)
from privsem.aggregation.masked.crypto import (
    KEY_BYTES,
    KeyPair,
    MaskExpander,
    Secret,
    derive_key,
    verify,
    word_dtype,
)
from privsem.aggregation.masked.encoding import decode_sum
from privsem.aggregation.masked.graph import neighbours
from privsem.errors import MessageError, ProtocolAbort
from privsem.protocol.messages import (
    MASK_TRANSITIONS,
    MaskedInput,
    MaskKeys,
    MaskRoster,
    MaskShares,
    MaskSharesDelivery,
    MaskStage,
    RoundSpec,
    SurvivorList,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
    decode,
    encode,
)

MAX_SHARE_CIPHERTEXT = 512
MAX_RECOMBINATIONS = 64


class MaskedServer(ServerAggregator):
    def __init__(self, spec: RoundSpec, registry: Mapping[str, bytes]) -> None:
        self.spec, self.registry = spec, dict(registry)
        self.p = params_from_spec(spec)
        self.sid = spec.session_id
        self._stage = MaskStage.ADVERTISE
        self._raw: dict[str, bytes] = {}  # this stage's first payload per client (T10)
        self.rejected: dict[str, str] = {}
        self.live: dict[str, int] = {}  # stage -> clients counted
        self._keys: dict[str, MaskKeys] = {}
        self._graph = neighbours(spec.cohort, self.p.degree, self.sid)
        self._u1: frozenset[str] = frozenset()
        self._shares: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> ciphertext
        self._u2: tuple[str, ...] = ()  # clients whose shares were delivered (fixed at SHARE)
        self._inputs: dict[str, MaskedInput] = {}
        self._survivors: tuple[str, ...] = ()
        self._dropped: tuple[str, ...] = ()
        self._sigs: dict[str, bytes] = {}
        self._unmask: dict[str, UnmaskShares] = {}
        self._total: np.ndarray | None = None

    @property
    def stage(self) -> str:  # type: ignore[override]
        return self._stage.value

    def _advance(self, to: MaskStage) -> None:
        if to not in MASK_TRANSITIONS[self._stage]:
            raise ProtocolAbort(f"server: masked stage {self._stage.value} -> {to.value} is not "
                                "allowed")
        self._stage, self._raw = to, {}

    def _abort(self, reason: str) -> ProtocolAbort:
        self._advance(MaskStage.ABORTED)
        return ProtocolAbort(f"masked round {self.spec.round} aborted: {reason}; no aggregate is "
                             "released")

    def _reject(self, client: str, reason: str) -> None:
        self.rejected.setdefault(client, f"{self._stage.value}: {reason}")

    # ------------------------------------------------------------------ receiving
    def receive(self, client: str, payload: bytes) -> None:
        if client in self.rejected:
            return
        if client in self._raw:  # T10: a retransmit counts once; a different payload is refused
            if self._raw[client] != payload:
                self._reject(client, "conflicting second message in one stage")
                self._forget_stage_message(client)
            return
        self._raw[client] = payload
        try:
            msg = decode(payload)
        except MessageError as e:
            self._reject(client, str(e))
            return
        problem = envelope_problem(self.spec, client, msg)
        if problem is None:
            handler = {MaskStage.ADVERTISE: self._take_keys, MaskStage.SHARE: self._take_shares,
                       MaskStage.INPUT: self._take_input,
                       MaskStage.CONSISTENCY: self._take_signature,
                       MaskStage.UNMASK: self._take_unmask}.get(self._stage)
            problem = handler(client, msg) if handler else "the round is closed"
        if problem:
            self._reject(client, problem)

    def _forget_stage_message(self, client: str) -> None:
        """Drops the client's message of the current stage only; what it sent in earlier
        stages (its keys, the shares its neighbours hold) is still needed to unmask the
        others."""
        stores: dict[MaskStage, dict[str, Any]] = {
            MaskStage.ADVERTISE: self._keys, MaskStage.SHARE: self._shares,
            MaskStage.INPUT: self._inputs, MaskStage.CONSISTENCY: self._sigs,
            MaskStage.UNMASK: self._unmask}
        store = stores.get(self._stage)
        if store is not None:
            store.pop(client, None)

    def _take_keys(self, client: str, msg: Any) -> str | None:
        if not isinstance(msg, MaskKeys):
            return f"expected mask_keys, got {msg.TYPE}"
        if client not in self.registry:
            return "client has no registered identity key"
        if len(msg.enc_pk) != KEY_BYTES or len(msg.mask_pk) != KEY_BYTES or len(
                msg.commitment) != 32:
            return "invalid public key length"
        if not verify(self.registry[client], msg.signature,
                      keys_transcript(self.sid, client, msg.enc_pk, msg.mask_pk,
                                      msg.commitment)):
            return "keys are not signed by the registered identity"
        self._keys[client] = msg
        return None

    def _take_shares(self, client: str, msg: Any) -> str | None:
        if not isinstance(msg, MaskShares):
            return f"expected mask_shares, got {msg.TYPE}"
        if client not in self._keys:
            return "shares from a client that advertised no keys"
        want = self._graph[client] & self._u1
        if len(msg.recipients) != len(msg.ciphertexts) or set(msg.recipients) != want or len(
                set(msg.recipients)) != len(msg.recipients):
            return "shares are not addressed to exactly the client's neighbours"
        if any(len(ct) > MAX_SHARE_CIPHERTEXT for ct in msg.ciphertexts):
            return "share ciphertext is oversized"
        self._shares[client] = dict(zip(msg.recipients, msg.ciphertexts))
        return None

    def _take_input(self, client: str, msg: Any) -> str | None:
        if not isinstance(msg, MaskedInput):
            return f"expected masked_input, got {msg.TYPE}"
        if client not in self._shares:
            return "masked input from a client outside the share stage"
        dt = np.dtype(word_dtype(self.p.modulus_bits))
        if msg.vector.dtype != dt or msg.vector.shape != (self.p.length,):
            return f"vector {msg.vector.dtype}{msg.vector.shape} is not {dt}({self.p.length},)"
        if self.p.modulus_bits not in (32, 64) and np.any(msg.vector >> self.p.modulus_bits):
            return f"vector has values outside [0, 2^{self.p.modulus_bits})"
        if not set(msg.excluded) <= self._graph[client]:
            return "excluded peers that are not neighbours"
        self._inputs[client] = msg
        return None

    def _take_signature(self, client: str, msg: Any) -> str | None:
        if not isinstance(msg, SurvivorSignature):
            return f"expected survivor_signature, got {msg.TYPE}"
        if client not in self._survivors:
            return "signature from a client that is not a survivor"
        if not verify(self.registry[client], msg.signature,
                      survivors_transcript(self.sid, self._survivors)):
            return "signature does not cover the survivor list"
        self._sigs[client] = msg.signature
        return None

    def _take_unmask(self, client: str, msg: Any) -> str | None:
        if not isinstance(msg, UnmaskShares):
            return f"expected unmask_shares, got {msg.TYPE}"
        if not (len(msg.peers) == len(msg.kinds) == len(msg.shares)) or len(
                set(msg.peers)) != len(msg.peers):
            return "malformed unmask shares"
        holds = self._graph[client] | {client}
        for j, kind, share in zip(msg.peers, msg.kinds, msg.shares):
            if j not in holds:
                return f"share of {j}, which the client does not hold"
            if kind != (SELF_MASK if j in self._survivors else MASK_KEY if j in self._dropped
                        else None):
                return f"share of the wrong kind for {j}"
            if len(share) != shamir.ELEMENT_BYTES:
                return "share of the wrong length"
        self._unmask[client] = msg
        return None

    # ------------------------------------------------------------------ stage changes
    def _counted(self, store: Mapping[str, Any]) -> list[str]:
        return [c for c in self.spec.cohort if c in store and c not in self.rejected]

    def _need(self, clients: list[str], what: str) -> None:
        self.live[self._stage.value] = len(clients)
        if len(clients) < self.p.min_survivors:
            raise self._abort(f"{len(clients)} clients {what}, below the minimum "
                              f"{self.p.min_survivors}")

    def next_requests(self) -> dict[str, bytes]:
        s, r = self.sid, self.spec.round
        if self._stage is MaskStage.ADVERTISE:
            u1 = self._counted(self._keys)
            self._need(u1, "advertised keys")
            self._u1 = frozenset(u1)
            out = {}
            for c in u1:  # each client gets its own and its live neighbours' keys only
                ids = tuple(x for x in u1 if x == c or x in self._graph[c])
                k = [self._keys[x] for x in ids]
                out[c] = encode(MaskRoster(
                    session_id=s, round=r, clients=ids, enc_pks=tuple(m.enc_pk for m in k),
                    mask_pks=tuple(m.mask_pk for m in k),
                    commitments=tuple(m.commitment for m in k),
                    signatures=tuple(m.signature for m in k)))
            self._advance(MaskStage.SHARE)
            return out
        if self._stage is MaskStage.SHARE:
            u2 = self._counted(self._shares)
            self._need(u2, "sent their shares")
            self._u2 = tuple(u2)
            out = {}
            for c in u2:
                senders = tuple(j for j in u2 if j in self._graph[c])
                out[c] = encode(MaskSharesDelivery(
                    session_id=s, round=r, recipient=c, senders=senders,
                    ciphertexts=tuple(self._shares[j][c] for j in senders)))
            self._advance(MaskStage.INPUT)
            return out
        if self._stage is MaskStage.INPUT:
            # Dropped = U2 − U3 with U2 as delivered: a client whose masked input was rejected
            # on arrival is dropped like one that never sent it, so its masks are removed.
            u2 = list(self._u2)
            arrived = self._counted(self._inputs)
            excluded = {j for c in arrived for j in self._inputs[c].excluded}
            for j in excluded:
                self.rejected.setdefault(j, "excluded by a neighbour whose share from it failed "
                                            "authentication")
            self._survivors = tuple(c for c in arrived if c not in excluded)
            self._dropped = tuple(c for c in u2 if c not in self._survivors)
            self._need(list(self._survivors), "sent masked inputs")
            if self.p.consistency_check:
                msg = encode(SurvivorList(session_id=s, round=r, survivors=self._survivors))
                self._advance(MaskStage.CONSISTENCY)
                return {c: msg for c in self._survivors}
            return self._unmask_requests((), ())
        if self._stage is MaskStage.CONSISTENCY:
            u4 = [c for c in self._survivors if c in self._sigs and c not in self.rejected]
            self._need(u4, "signed the survivor list")
            return self._unmask_requests(tuple(u4), tuple(self._sigs[c] for c in u4))
        if self._stage is MaskStage.UNMASK:
            self._total = self._unmask_sum()
            self._advance(MaskStage.DONE)
            return {}
        return {}

    def _unmask_requests(self, signers: tuple[str, ...], sigs: tuple[bytes, ...]
                         ) -> dict[str, bytes]:
        """Each client gets the signatures of the share holders of its own peers (its
        two-hop neighbourhood), which is all it checks: per-client cost independent of n."""
        by_signer = dict(zip(signers, sigs))
        targets = signers if self.p.consistency_check else self._survivors
        out = {}
        for c in targets:
            near: set[str] = set()
            for j in self._graph[c] | {c}:
                near |= self._graph[j] | {j}
            mine = tuple(x for x in signers if x in near)
            out[c] = encode(UnmaskRequest(
                session_id=self.sid, round=self.spec.round, survivors=self._survivors,
                dropped=self._dropped, signers=mine,
                signatures=tuple(by_signer[x] for x in mine)))
        self._advance(MaskStage.UNMASK)
        return out

    # ------------------------------------------------------------------ the sum
    def _collect(self, kind: str) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {}
        for holder in self._counted(self._unmask):
            m = self._unmask[holder]
            for j, k, share in zip(m.peers, m.kinds, m.shares):
                if k == kind:
                    out.setdefault(j, {})[share_point(self.spec.cohort, holder)] = share
        return out

    def _recover(self, shares: Mapping[int, bytes], check: Any, who: str) -> bytes:
        """A secret from t of ``shares`` that passes ``check``; tries other subsets if a
        share is bad, and aborts rather than sum garbage."""
        t = self.p.threshold
        if len(shares) < t:
            raise self._abort(f"only {len(shares)} shares of {who} arrived, {t} are needed")
        for i, subset in enumerate(itertools.combinations(sorted(shares), t)):
            if i >= MAX_RECOMBINATIONS:
                break
            try:
                secret = shamir.combine({x: shares[x] for x in subset}, threshold=t)
            except ValueError:
                continue
            if check(secret):
                return secret
        raise self._abort(f"the shares of {who} do not reconstruct its committed secret")

    def _unmask_sum(self) -> np.ndarray:
        p, sid = self.p, self.sid
        ex = MaskExpander(p.length, p.modulus_bits)
        acc = np.zeros(p.length, dtype=ex.dtype)
        for c in self._survivors:
            np.add(acc, self._inputs[c].vector, out=acc)
        seeds, keys = self._collect(SELF_MASK), self._collect(MASK_KEY)
        for c in self._survivors:
            commit = self._keys[c].commitment
            seed = self._recover(seeds.get(c, {}), lambda b, c=c, cm=commit:
                                 self_mask_commitment(sid, c, b) == cm, f"survivor {c}")
            ex.add(acc, derive_key(seed, session_id=sid, label="self-mask", parties=(c,)), -1)
        for j in self._dropped:
            pk = self._keys[j].mask_pk
            raw = self._recover(keys.get(j, {}), lambda b, pk=pk:
                                KeyPair.from_secret(Secret(b)).public == pk, f"dropped {j}")
            pair = KeyPair.from_secret(Secret(raw))
            for c in self._survivors:
                if j in self._graph[c] and j not in self._inputs[c].excluded:
                    shared = pair.agree(self._keys[c].mask_pk, peer=c)
                    key = derive_key(shared, session_id=sid, label="pair-mask",
                                     parties=tuple(sorted((c, j))))
                    ex.add(acc, key, -pair_sign(c, j))  # c added pair_sign(c, j)·mask
        ex.reduce(acc)
        return decode_sum(acc, p)

    def finish(self) -> AggregateResult:
        if self._total is None:
            raise ProtocolAbort("server: the masked aggregate is not ready (round incomplete "
                                "or aborted)")
        p = self.p
        shape = (len(self.spec.prompt_ids), self.spec.dim)
        total = (self._total.astype(np.float64) / p.scale).reshape(shape)
        var = len(self._survivors) * (p.noise_sigma / p.scale) ** 2
        started = [c for c in self.spec.cohort if c in self._keys or c in self.rejected]
        return AggregateResult(
            total=total, contributors=self._survivors, noise_variance=var, individual=None,
            rejected=dict(self.rejected),
            dropped=tuple(c for c in started if c not in self._survivors),
            detail={"live_per_stage": dict(self.live), "dropped_after_shares": self._dropped,
                    "degree": p.degree, "threshold": p.threshold,
                    "min_survivors": p.min_survivors, "modulus_bits": p.modulus_bits,
                    "scale": p.scale, "placement": p.placement,
                    "consistency_check": p.consistency_check})
