"""An honest client of the masked protocol (Bonawitz et al. 2017, §4; SecAgg+ graph).

The client's messages in order: keys (``start``) → encrypted shares (on the roster) → masked
input (on the delivery of its neighbours' shares) → signature over the survivor list (optional
consistency round) → unmasking shares. Every invariant an honest client relies on is an explicit
check that raises :class:`~privsem.errors.ProtocolAbort` naming the fact that failed; an
aborted client sends nothing more, so no share or secret leaves it after a failed check.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from dp_accounting import dp_event as ev

from privsem.aggregation.base import ClientAggregator, ClientContext
from privsem.aggregation.masked import shamir
from privsem.aggregation.masked.crypto import (
    KEY_BYTES,
    KeyPair,
    MaskExpander,
    Secret,
    derive_key,
    open_sealed,
    random_secret,
    seal,
    share_ad,
    transcript,
    verify,
)
from privsem.aggregation.masked.encoding import (
    MaskingParams,
    decode_sum,
    encode_matrix,
    word_dtype,
)
from privsem.aggregation.masked.graph import neighbours
from privsem.errors import MessageError, ProtocolAbort
from privsem.protocol.messages import (
    MaskedInput,
    MaskKeys,
    MaskRoster,
    MaskShares,
    MaskSharesDelivery,
    MaskStage,
    SurvivorList,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskShares,
    decode,
    encode,
)

SELF_MASK, MASK_KEY = "self_mask", "mask_key"


def params_from_spec(spec: Any) -> MaskingParams:
    try:
        return MaskingParams(**spec.params["aggregation"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolAbort(f"masked: round parameters are not valid masking parameters ({e})"
                            ) from None


def keys_transcript(session_id: str, client: str, enc_pk: bytes, mask_pk: bytes,
                    commitment: bytes) -> bytes:
    return transcript(b"privsem/secagg/v1/keys", session_id, client, enc_pk, mask_pk, commitment)


def survivors_transcript(session_id: str, survivors: tuple[str, ...]) -> bytes:
    return transcript(b"privsem/secagg/v1/survivors", session_id, *sorted(survivors))


def self_mask_commitment(session_id: str, client: str, seed: bytes) -> bytes:
    """Binds the self-mask seed so that the server can check a reconstruction."""
    return hashlib.sha256(transcript(b"privsem/secagg/v1/commit", session_id, client, seed)
                          ).digest()


def share_point(cohort: tuple[str, ...], client: str) -> int:
    """The Shamir evaluation point of ``client``: its 1-based position in the cohort."""
    return cohort.index(client) + 1


def pair_sign(me: str, peer: str) -> int:
    """+1 if ``me`` adds the pair's mask, −1 if it subtracts it (the smaller id adds)."""
    return 1 if me < peer else -1


class MaskedClient(ClientAggregator):
    mechanism = "embedding_discrete_gaussian"

    def __init__(self, ctx: ClientContext) -> None:
        if ctx.identity is None:
            raise ProtocolAbort(f"client {ctx.client_id}: the masked back-end needs a registered "
                                "identity key")
        self.ctx, self.me, self.spec = ctx, ctx.client_id, ctx.spec
        self.p = params_from_spec(ctx.spec)
        self.sid = ctx.spec.session_id
        self.stage: MaskStage | None = None
        self._enc, self._mask = KeyPair(), KeyPair()
        self._seed: Secret = random_secret()
        self._commit = self_mask_commitment(self.sid, self.me, self._seed.reveal())
        self._words: np.ndarray | None = None
        self._roster: dict[str, tuple[bytes, bytes, bytes]] = {}
        # The graph is fixed by the cohort and the session id (SecAgg+): every party computes
        # it; the roster brings only this client's neighbours' keys.
        self._graph = neighbours(ctx.spec.cohort, self.p.degree, self.sid)
        self._nbrs: frozenset[str] = frozenset()  # neighbours whose keys arrived
        self._held: dict[str, tuple[bytes, bytes]] = {}  # peer -> (self-mask share, key share)
        self._masked_with: frozenset[str] = frozenset()
        self._excluded: tuple[str, ...] = ()
        self._signed: tuple[str, ...] | None = None
        self.stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ accounting
    def release_event(self) -> tuple[ev.DpEvent, dict[str, Any]]:
        rho = self.p.zcdp()
        event: ev.DpEvent = ev.ZCDpEvent(rho) if np.isfinite(rho) else ev.NonPrivateDpEvent()
        return event, {"mechanism": "discrete Gaussian on the integer lattice",
                       "noise_multiplier": self.p.noise_multiplier, "clip": self.p.clip,
                       "scale": self.p.scale, "sigma_integer": self.p.noise_sigma,
                       "placement": self.p.placement, "noise_shares": self.p.noise_shares,
                       "sensitivity_integer": self.p.sensitivity, "rho": rho}

    # ------------------------------------------------------------------ stage 0: keys
    def add_noise(self, clipped: np.ndarray) -> np.ndarray:
        """Encodes ``clipped`` in fixed point with the discrete Gaussian noise added in the
        integer domain: the words mod 2^b that :meth:`send` masks."""
        if self.stage is not None:
            raise ProtocolAbort(f"client {self.me}: noise drawn after the round started")
        flat = np.asarray(clipped, dtype=np.float64).reshape(-1)
        if flat.size != self.p.length or not np.all(np.isfinite(flat)):
            raise ProtocolAbort(f"client {self.me}: input of {flat.size} entries (or non-finite)"
                                f" does not match the round's length {self.p.length}")
        noise = self.ctx.randomness.discrete_gaussian((self.p.length,), self.p.noise_sigma)
        words, frac = encode_matrix(flat, noise, self.p)
        self.stats = {"clip_fraction": frac, "noise_sigma_integer": self.p.noise_sigma,
                      "noise_std": self.p.noise_sigma / self.p.scale}
        return words

    def send(self, noised: np.ndarray) -> bytes:
        if self.stage is not None:
            raise ProtocolAbort(f"client {self.me}: start called twice in one round")
        words = np.asarray(noised)
        want = word_dtype(self.p.modulus_bits)
        if words.shape != (self.p.length,) or words.dtype != want:
            raise ProtocolAbort(f"client {self.me}: encoded release of shape {words.shape} and "
                                f"dtype {words.dtype} does not match the round (length "
                                f"{self.p.length}, {np.dtype(want)})")
        # Each encoding must lie within ±R, or the sum of n could wrap the modulus (T12).
        if np.any(np.abs(decode_sum(words, self.p)) > self.p.value_range):
            raise ProtocolAbort(f"client {self.me}: encoded release has values outside "
                                f"±{self.p.value_range}, the range the modulus was sized for")
        self._words = words.copy()
        if not self.stats:
            self.stats = {"noise_sigma_integer": self.p.noise_sigma,
                          "noise_std": self.p.noise_sigma / self.p.scale}
        self.stage = MaskStage.ADVERTISE
        sig = self.ctx.identity.sign(keys_transcript(  # type: ignore[union-attr]
            self.sid, self.me, self._enc.public, self._mask.public, self._commit))
        return encode(MaskKeys(session_id=self.sid, round=self.spec.round, client=self.me,
                               enc_pk=self._enc.public, mask_pk=self._mask.public,
                               commitment=self._commit, signature=sig))

    def respond(self, request: bytes) -> bytes | None:
        """Answers one request; after any failed check the client stays aborted for good."""
        if self.stage in (MaskStage.ABORTED, MaskStage.DONE):
            raise ProtocolAbort(f"client {self.me}: round already "
                                f"{'aborted' if self.stage is MaskStage.ABORTED else 'done'}; "
                                "nothing more is sent")
        try:
            return self._respond(request)
        except ProtocolAbort:
            self.stage = MaskStage.ABORTED  # respond() refuses everything from now on
            raise

    def _respond(self, request: bytes) -> bytes | None:
        try:
            msg = decode(request)
        except MessageError as e:
            raise ProtocolAbort(f"client {self.me}: malformed request ({e})") from None
        if getattr(msg, "session_id", None) != self.sid or getattr(msg, "round", None) != \
                self.spec.round:
            raise ProtocolAbort(f"client {self.me}: message from another session or round "
                                "(replay)")
        handlers = {MaskRoster: (MaskStage.ADVERTISE, self._on_roster),
                    MaskSharesDelivery: (MaskStage.SHARE, self._on_delivery),
                    SurvivorList: (MaskStage.INPUT, self._on_survivors),
                    UnmaskRequest: (None, self._on_unmask)}
        if type(msg) not in handlers:
            raise ProtocolAbort(f"client {self.me}: unexpected message {msg.TYPE}")
        want, handler = handlers[type(msg)]
        if want is not None and self.stage is not want:
            raise ProtocolAbort(f"client {self.me}: {msg.TYPE} arrived in stage "
                                f"{self.stage.value if self.stage else 'none'}")
        return handler(msg)  # type: ignore[operator]

    # ------------------------------------------------------------------ stage 1: shares
    def _on_roster(self, msg: MaskRoster) -> bytes:
        me, p, cohort = self.me, self.p, self.spec.cohort
        n = len(msg.clients)
        if not (len(msg.enc_pks) == len(msg.mask_pks) == len(msg.commitments)
                == len(msg.signatures) == n):
            raise ProtocolAbort(f"client {me}: roster columns have different lengths")
        if len(set(msg.clients)) != n:
            raise ProtocolAbort(f"client {me}: roster lists a client twice")
        for c in msg.clients:
            if c not in cohort or c not in self.ctx.registry:
                raise ProtocolAbort(f"client {me}: roster lists {c!r}, which is not a registered "
                                    "member of the cohort (Sybil)")
            if c != me and c not in self._graph[me]:
                raise ProtocolAbort(f"client {me}: roster lists {c!r}, which is not a neighbour")
        # With the complete graph the roster is the whole round: at least min_survivors. With
        # a sparse graph it is the neighbourhood: at least t, or no secret could be recovered.
        need = p.min_survivors if p.degree == len(cohort) - 1 else p.threshold
        if n < need:
            raise ProtocolAbort(f"client {me}: roster has {n} registered clients, fewer than "
                                f"the minimum {need}")
        if me not in msg.clients:
            raise ProtocolAbort(f"client {me}: own key missing from the roster")
        keys = [*msg.enc_pks, *msg.mask_pks]
        if any(len(k) != KEY_BYTES for k in keys):
            raise ProtocolAbort(f"client {me}: invalid public key (length is not {KEY_BYTES})")
        if len(set(keys)) != len(keys):
            raise ProtocolAbort(f"client {me}: invalid public key (the roster repeats a key)")
        i = msg.clients.index(me)
        if (msg.enc_pks[i], msg.mask_pks[i], msg.commitments[i]) != (
                self._enc.public, self._mask.public, self._commit):
            raise ProtocolAbort(f"client {me}: the roster carries keys that are not its own")
        for c, e, m, cm, s in zip(msg.clients, msg.enc_pks, msg.mask_pks, msg.commitments,
                                  msg.signatures):
            if not verify(self.ctx.registry[c], s, keys_transcript(self.sid, c, e, m, cm)):
                raise ProtocolAbort(f"client {me}: keys of {c} are not signed by its registered "
                                    "identity")
            self._roster[c] = (e, m, cm)
        self._nbrs = frozenset(c for c in msg.clients if c != me)
        # The holders are the roster itself, so there are at least t of them: the roster-size
        # check above demands t (sparse) or min_survivors >= t (complete; MaskingParams).
        holders = sorted(self._nbrs | {me})
        # Check every neighbour's keys now (low-order points, T7), before anything is sent.
        enc_keys = {j: self._enc.agree(self._roster[j][0], peer=j) for j in self._nbrs}
        for j in self._nbrs:
            self._mask.agree(self._roster[j][1], peer=j)
        points = [share_point(cohort, h) for h in holders]
        seed_shares = shamir.split(self._seed.reveal(), points=points, threshold=p.threshold)
        key_shares = shamir.split(self._mask.secret().reveal(), points=points,
                                  threshold=p.threshold)
        own = share_point(cohort, me)
        self._held[me] = (seed_shares[own], key_shares[own])
        recipients, cts = [], []
        for j in sorted(self._nbrs):
            pt = share_point(cohort, j)
            key = derive_key(enc_keys[j], session_id=self.sid, label="share", parties=(me, j))
            body = transcript(me, j, seed_shares[pt], key_shares[pt])
            recipients.append(j)
            cts.append(seal(key, body, share_ad(self.sid, me, j)))
        self.stage = MaskStage.SHARE
        return encode(MaskShares(session_id=self.sid, round=self.spec.round, client=me,
                                 recipients=tuple(recipients), ciphertexts=tuple(cts)))

    # ------------------------------------------------------------------ stage 2: masked input
    def _on_delivery(self, msg: MaskSharesDelivery) -> bytes:
        me, p = self.me, self.p
        if msg.recipient != me:
            raise ProtocolAbort(f"client {me}: shares addressed to {msg.recipient!r}")
        if len(msg.senders) != len(msg.ciphertexts) or len(set(msg.senders)) != len(msg.senders):
            raise ProtocolAbort(f"client {me}: delivery lists a sender twice or lacks a "
                                "ciphertext")
        excluded = []
        for j, ct in zip(msg.senders, msg.ciphertexts):
            if j not in self._nbrs:
                raise ProtocolAbort(f"client {me}: shares from {j!r}, which is not a neighbour")
            try:
                self._held[j] = self._open_share(j, ct)
            except ProtocolAbort:
                excluded.append(j)  # T8: the peer is excluded, never trusted
        live = set(msg.senders) - set(excluded)
        if len(live) + 1 < p.threshold:
            raise ProtocolAbort(f"client {me}: {len(live) + 1} live share holders, below the "
                                f"threshold {p.threshold}")
        if self._words is None:
            raise ProtocolAbort(f"client {me}: no input to mask")
        ex = MaskExpander(p.length, p.modulus_bits)
        y = self._words.copy()
        ex.add(y, self._self_mask_key(), +1)
        for j in sorted(live):
            ex.add(y, self._pair_key(j), pair_sign(me, j))
        ex.reduce(y)
        self._masked_with, self._excluded = frozenset(live), tuple(sorted(excluded))
        self.stage = MaskStage.INPUT
        return encode(MaskedInput(session_id=self.sid, round=self.spec.round, client=me,
                                  excluded=self._excluded, vector=y))

    def _open_share(self, j: str, ct: bytes) -> tuple[bytes, bytes]:
        shared = self._enc.agree(self._roster[j][0], peer=j)
        key = derive_key(shared, session_id=self.sid, label="share", parties=(j, self.me))
        body = open_sealed(key, ct, share_ad(self.sid, j, self.me), what=f"share from {j}")
        parts = _untranscript(body)
        if len(parts) != 4 or parts[0] != j.encode() or parts[1] != self.me.encode():
            raise ProtocolAbort(f"share from {j}: src/dst do not match the envelope")
        return parts[2], parts[3]

    def _pair_key(self, j: str) -> bytes:
        shared = self._mask.agree(self._roster[j][1], peer=j)
        return derive_key(shared, session_id=self.sid, label="pair-mask",
                          parties=tuple(sorted((self.me, j))))

    def _self_mask_key(self) -> bytes:
        return derive_key(self._seed.reveal(), session_id=self.sid, label="self-mask",
                          parties=(self.me,))

    # ------------------------------------------------------------------ stage 3: consistency
    def _on_survivors(self, msg: SurvivorList) -> bytes:
        self._check_survivors(msg.survivors)
        self._signed = tuple(sorted(msg.survivors))
        self.stage = MaskStage.CONSISTENCY
        sig = self.ctx.identity.sign(  # type: ignore[union-attr]
            survivors_transcript(self.sid, msg.survivors))
        return encode(SurvivorSignature(session_id=self.sid, round=self.spec.round,
                                        client=self.me, signature=sig))

    def _check_survivors(self, survivors: tuple[str, ...]) -> None:
        me = self.me
        if len(set(survivors)) != len(survivors):
            raise ProtocolAbort(f"unmask: client {me} sees a survivor listed twice")
        if me not in survivors:
            raise ProtocolAbort(f"unmask: client {me} is not among the survivors")
        unknown = [c for c in survivors if c not in self.spec.cohort]
        if unknown:
            raise ProtocolAbort(f"unmask: survivors {unknown} are not in the cohort")
        if len(survivors) < self.p.min_survivors:
            raise ProtocolAbort(f"unmask: {len(survivors)} survivors, below the minimum "
                                f"{self.p.min_survivors} (the noise of the sum would be short)")
        bad = [c for c in self._excluded if c in survivors]
        if bad:
            raise ProtocolAbort(f"unmask: client {me} excluded {bad}, yet they are listed as "
                                "surviving")
        # U3 ⊆ U2 (Bonawitz et al. 2017, round 4): a neighbour listed as surviving must be one
        # this client masked with; otherwise its mask key, not its self-mask, would be asked
        # for, and the server could unmask this client alone.
        unmasked = [c for c in survivors if c in self._graph[me] and c not in self._masked_with]
        if unmasked:
            raise ProtocolAbort(f"unmask: client {me} did not mask with {unmasked}, yet they are "
                                "listed as surviving")

    # ------------------------------------------------------------------ stage 4: unmask
    def _on_unmask(self, msg: UnmaskRequest) -> bytes:
        me, p = self.me, self.p
        want = MaskStage.CONSISTENCY if p.consistency_check else MaskStage.INPUT
        if self.stage is not want:
            raise ProtocolAbort(f"unmask: request arrived in stage "
                                f"{self.stage.value if self.stage else 'none'}")
        if len(set(msg.dropped)) != len(msg.dropped):
            raise ProtocolAbort(f"unmask: client {me} sees a dropped client listed twice")
        both = set(msg.survivors) & set(msg.dropped)
        if both:
            raise ProtocolAbort(f"unmask: client {min(both)} listed as both surviving and "
                                "dropped")
        if me in msg.dropped:
            raise ProtocolAbort(f"unmask: client {me} is listed as dropped")
        self._check_survivors(msg.survivors)
        unknown = [c for c in msg.dropped if c not in self.spec.cohort]
        if unknown:
            raise ProtocolAbort(f"unmask: dropped clients {unknown} are not in the cohort")
        unlisted = [c for c in self._masked_with if c not in msg.survivors and c not in
                    msg.dropped]
        if unlisted:
            raise ProtocolAbort(f"unmask: peers {sorted(unlisted)} that client {me} masked with "
                                "are listed neither as surviving nor as dropped")
        if p.consistency_check:
            if tuple(sorted(msg.survivors)) != self._signed:
                raise ProtocolAbort(f"unmask: client {me} signed a different survivor list")
            if len(msg.signers) != len(msg.signatures) or len(set(msg.signers)) != len(
                    msg.signers):
                raise ProtocolAbort("unmask: malformed signature list")
            self._check_signatures(msg)
        peers, kinds, shares = [], [], []
        for j, (seed_share, key_share) in sorted(self._held.items()):
            if j in msg.survivors:
                peers.append(j)
                kinds.append(SELF_MASK)
                shares.append(seed_share)
            elif j in msg.dropped:
                peers.append(j)
                kinds.append(MASK_KEY)
                shares.append(key_share)
        self.stage = MaskStage.DONE
        self._held.clear()
        return encode(UnmaskShares(session_id=self.sid, round=self.spec.round, client=me,
                                   peers=tuple(peers), kinds=tuple(kinds), shares=tuple(shares)))

    def _check_signatures(self, msg: UnmaskRequest) -> None:
        """Before revealing a share of peer j, at least t of j's share holders must have
        signed the survivor list this client signed (Bonawitz et al. 2017, round 4, per
        neighbourhood as in SecAgg+). Honest holders sign once, and 2t > holders, so two
        different views of j's fate cannot both pass: j's self-mask and mask key are never
        both revealed. Only signatures of holders of this client's peers are checked:
        O(degree²) at most, independent of n."""
        text = survivors_transcript(self.sid, msg.survivors)
        relevant: set[str] = set()
        for j in self._held:
            relevant |= self._graph[j] | {j}
        valid = set()
        for c, sig in zip(msg.signers, msg.signatures):
            if c not in relevant:
                continue
            if c not in msg.survivors or not verify(self.ctx.registry.get(c, b""), sig, text):
                raise ProtocolAbort(f"unmask: {c} did not sign this survivor list "
                                    "(inconsistent views of who dropped)")
            valid.add(c)
        for j in sorted(self._held):
            if j not in msg.survivors and j not in msg.dropped:
                continue
            got = len(valid & (self._graph[j] | {j}))
            if got < self.p.threshold:
                raise ProtocolAbort(f"unmask: {got} signatures from the share holders of {j}, "
                                    f"below the threshold {self.p.threshold}")


def _untranscript(data: bytes) -> list[bytes]:
    """Inverse of :func:`transcript` for bytes parts; raises ProtocolAbort if malformed."""
    parts, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "little")
        if i + 4 + n > len(data):  # also a length prefix cut short (i + 4 > len(data))
            raise ProtocolAbort("share: malformed plaintext")
        parts.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return parts
