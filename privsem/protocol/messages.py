"""Protocol messages: frozen typed dataclasses, a stage enum and its transitions.

Rules for changing it:
- Every message of every party is a frozen dataclass here, with a ``TYPE`` tag; adding a field
  bumps :data:`privsem.protocol.wire.VERSION`. The wire format lives in
  :mod:`privsem.protocol.wire` (no pickle, ever; every field type-checked on decode).
- Messages are decoded and validated once, at the boundary (:func:`decode`); inside, code is
  typed. A bad frame raises :class:`~privsem.errors.MessageError`.
- :data:`TRANSITIONS` is the table of valid stage changes of the round; anything else raises.
  The masked back-end's own stages are :class:`MaskStage` with :data:`MASK_TRANSITIONS`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from privsem.errors import ProtocolAbort
from privsem.protocol import wire
from privsem.protocol.wire import MAGIC, MAX_MESSAGE_BYTES, encode

__all__ = ["MAGIC", "MAX_MESSAGE_BYTES", "decode", "encode"]


class Stage(enum.Enum):
    IDLE = "idle"
    SPEC = "spec"  # server announced the round
    UPLOAD = "upload"  # clients' noisy matrices collected
    CONSENSUS = "consensus"  # consensus broadcast
    NOMINATION = "nomination"  # shared mode: nominated texts collected
    LABELS = "labels"  # shared mode: chosen pseudo-labels broadcast
    DONE = "done"
    ABORTED = "aborted"


TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.IDLE: frozenset({Stage.SPEC}),
    Stage.SPEC: frozenset({Stage.UPLOAD, Stage.ABORTED}),
    Stage.UPLOAD: frozenset({Stage.CONSENSUS, Stage.ABORTED}),
    Stage.CONSENSUS: frozenset({Stage.NOMINATION, Stage.DONE, Stage.ABORTED}),
    Stage.NOMINATION: frozenset({Stage.LABELS, Stage.ABORTED}),
    Stage.LABELS: frozenset({Stage.DONE, Stage.ABORTED}),
    Stage.DONE: frozenset({Stage.SPEC}),
    Stage.ABORTED: frozenset({Stage.SPEC}),
}


class StageMachine:
    """Holds one party's stage; ``advance`` refuses every change not in :data:`TRANSITIONS`."""

    def __init__(self, party: str) -> None:
        self.party = party
        self.stage = Stage.IDLE

    def advance(self, to: Stage) -> None:
        if to not in TRANSITIONS[self.stage]:
            raise ProtocolAbort(f"{self.party}: transition {self.stage.value} -> {to.value} is "
                                "not allowed")
        self.stage = to

    def expect(self, *stages: Stage) -> None:
        if self.stage not in stages:
            raise ProtocolAbort(f"{self.party}: message arrived in stage {self.stage.value}, "
                                f"expected {' or '.join(s.value for s in stages)}")


@dataclass(frozen=True)
class RoundSpec:
    """Server → clients: what this round is. ``session_id`` binds the run's nonce, round,
    cohort, prompts and params; ``run`` is the nonce of this run (chosen at set-up, new for every
    incarnation of a resumed run), so that no frame of one run is accepted in another."""

    TYPE: ClassVar[str] = "round_spec"
    round: int
    run: str
    session_id: str
    cohort: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    prompt_set_hash: str
    dim: int
    params: dict[str, Any]


@dataclass(frozen=True)
class EmbeddingUpload:
    """Client → server (plaintext back-end): the clipped, noised (prompts × dim) matrix."""

    TYPE: ClassVar[str] = "embedding_upload"
    session_id: str
    round: int
    client: str
    noise_std: float
    matrix: np.ndarray  # (prompts, dim) float32


@dataclass(frozen=True)
class ConsensusBroadcast:
    """Server → clients: consensus point, agreement and mean confidence per prompt."""

    TYPE: ClassVar[str] = "consensus"
    session_id: str
    round: int
    contributors: tuple[str, ...]
    noise_std_of_consensus: float
    consensus: np.ndarray  # (prompts, dim) float32: Σw·e / Σw (the plain mean when unweighted)
    agreement: np.ndarray  # (prompts,) float32, debiased for the known noise
    weight: np.ndarray  # (prompts,) float32: Σw / contributors (noisy; 1 when unweighted)


@dataclass(frozen=True)
class Nomination:
    """Client → server (shared mode): the client's candidate nearest the consensus, per prompt."""

    TYPE: ClassVar[str] = "nomination"
    session_id: str
    round: int
    client: str
    texts: tuple[str | None, ...]  # None where the prompt was skipped


@dataclass(frozen=True)
class PseudoLabels:
    """Server → clients (shared mode): the chosen text per prompt."""

    TYPE: ClassVar[str] = "pseudo_labels"
    session_id: str
    round: int
    texts: tuple[str | None, ...]


# ---------------------------------------------------------------------------------------------
# Masked back-end (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al. 2020). Keys,
# signatures and ciphertexts are raw bytes; vectors are uint32/uint64 arrays mod 2^b.


class MaskStage(enum.Enum):
    ADVERTISE = "advertise"  # clients' public keys collected
    SHARE = "share"  # encrypted Shamir shares collected
    INPUT = "input"  # masked inputs collected
    CONSISTENCY = "consistency"  # signatures over the survivor list collected
    UNMASK = "unmask"  # shares for unmasking collected
    DONE = "done"
    ABORTED = "aborted"


MASK_TRANSITIONS: dict[MaskStage, frozenset[MaskStage]] = {
    MaskStage.ADVERTISE: frozenset({MaskStage.SHARE, MaskStage.ABORTED}),
    MaskStage.SHARE: frozenset({MaskStage.INPUT, MaskStage.ABORTED}),
    MaskStage.INPUT: frozenset({MaskStage.CONSISTENCY, MaskStage.UNMASK, MaskStage.ABORTED}),
    MaskStage.CONSISTENCY: frozenset({MaskStage.UNMASK, MaskStage.ABORTED}),
    MaskStage.UNMASK: frozenset({MaskStage.DONE, MaskStage.ABORTED}),
    MaskStage.DONE: frozenset(),
    MaskStage.ABORTED: frozenset(),
}


@dataclass(frozen=True)
class MaskKeys:
    """Client → server: the client's two X25519 public keys for this session, signed with its
    registered Ed25519 identity key."""

    TYPE: ClassVar[str] = "mask_keys"
    session_id: str
    round: int
    client: str
    enc_pk: bytes  # X25519, for encrypting shares
    mask_pk: bytes  # X25519, for pairwise masks
    commitment: bytes  # SHA-256 binding the self-mask seed (checks its reconstruction)
    signature: bytes  # Ed25519 over the keys, the commitment and the session id


@dataclass(frozen=True)
class MaskRoster:
    """Server → clients: every advertised key of the round, with its signature."""

    TYPE: ClassVar[str] = "mask_roster"
    session_id: str
    round: int
    clients: tuple[str, ...]
    enc_pks: tuple[bytes, ...]
    mask_pks: tuple[bytes, ...]
    commitments: tuple[bytes, ...]
    signatures: tuple[bytes, ...]


@dataclass(frozen=True)
class MaskShares:
    """Client → server: one AEAD ciphertext of Shamir shares per neighbour."""

    TYPE: ClassVar[str] = "mask_shares"
    session_id: str
    round: int
    client: str
    recipients: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class MaskSharesDelivery:
    """Server → one client: the ciphertexts its neighbours addressed to it."""

    TYPE: ClassVar[str] = "mask_shares_delivery"
    session_id: str
    round: int
    recipient: str
    senders: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class MaskedInput:
    """Client → server: the encoded, noised and masked matrix, flattened, mod 2^b.

    ``excluded`` names the neighbours whose shares failed authentication (T8): the client did
    not mask with them, and the server must treat them as dropped."""

    TYPE: ClassVar[str] = "masked_input"
    session_id: str
    round: int
    client: str
    excluded: tuple[str, ...]
    vector: np.ndarray  # (prompts·dim,) uint32 or uint64


@dataclass(frozen=True)
class SurvivorList:
    """Server → clients (consistency round): whose masked inputs the sum will hold."""

    TYPE: ClassVar[str] = "survivor_list"
    session_id: str
    round: int
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class SurvivorSignature:
    """Client → server: Ed25519 signature over the session id and the survivor list."""

    TYPE: ClassVar[str] = "survivor_signature"
    session_id: str
    round: int
    client: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Server → clients: survivors (send their self-mask shares) and dropped clients (send
    their mask-key shares); with the consistency round, every signature collected."""

    TYPE: ClassVar[str] = "unmask_request"
    session_id: str
    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signers: tuple[str, ...]
    signatures: tuple[bytes, ...]


@dataclass(frozen=True)
class UnmaskShares:
    """Client → server: per peer, one share: of its self-mask seed (survivor) or of its mask key
    (dropped), never both."""

    TYPE: ClassVar[str] = "unmask_shares"
    session_id: str
    round: int
    client: str
    peers: tuple[str, ...]
    kinds: tuple[str, ...]  # "self_mask" or "mask_key", one per peer
    shares: tuple[bytes, ...]


# ---------------------------------------------------------------------------------------------
# CKKS back-end: serialised TenSEAL ciphertexts as raw bytes, one per chunk of N/2 slots.


@dataclass(frozen=True)
class CkksUpload:
    """Client → aggregator: the noised matrix and its count slot, encrypted under the key
    holder's public context (digest in the round parameters)."""

    TYPE: ClassVar[str] = "ckks_upload"
    session_id: str
    round: int
    client: str
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class DecryptRequest:
    """Aggregator → key holder: the encrypted sum of the named contributors' uploads."""

    TYPE: ClassVar[str] = "ckks_decrypt_request"
    session_id: str
    round: int
    contributors: tuple[str, ...]
    ciphertexts: tuple[bytes, ...]


@dataclass(frozen=True)
class AggregateRelease:
    """Key holder → aggregator: the decrypted sum with flooding noise, rounded to the grid."""

    TYPE: ClassVar[str] = "ckks_release"
    session_id: str
    round: int
    contributors: tuple[str, ...]
    total: np.ndarray  # (prompts, dim) float64


# ---------------------------------------------------------------------------------------------
# Runtime envelopes: how a networked runtime (Flower) carries the frames above to a party and
# its answer back (privsem.runtime.parties names the kinds).


@dataclass(frozen=True)
class Delivery:
    """Server runtime → a party's node: one frame of ``kind`` in protocol ``stage``."""

    TYPE: ClassVar[str] = "delivery"
    run: str  # the run's id: a node refuses deliveries of another run
    party: str
    kind: str
    stage: str
    frame: bytes


@dataclass(frozen=True)
class DeliveryAnswer:
    """A party's node → server runtime: ``status`` is ``reply`` (``frame`` holds it), ``none``
    (handled, nothing to send) or ``gone`` (``reason`` says why the party gave no answer)."""

    TYPE: ClassVar[str] = "delivery_answer"
    run: str
    party: str
    status: str
    reason: str
    frame: bytes


MESSAGE_TYPES: dict[str, Any] = {c.TYPE: c for c in (
    RoundSpec, EmbeddingUpload, ConsensusBroadcast, Nomination, PseudoLabels, MaskKeys,
    MaskRoster, MaskShares, MaskSharesDelivery, MaskedInput, SurvivorList, SurvivorSignature,
    UnmaskRequest, UnmaskShares, CkksUpload, DecryptRequest, AggregateRelease, Delivery,
    DeliveryAnswer)}


def decode(frame: bytes, expected: Any = None) -> Any:
    """Parses and validates one frame. Raises MessageError on anything malformed."""
    return wire.decode(frame, MESSAGE_TYPES, expected)
