"""The CKKS key holder: the only party with the secret key. It decrypts the round's aggregate,
once, and releases it only with flooding noise and rounding (TESTING.md T38).

Threat model (threat_models/ckks.md): the aggregator and the key holder do not collude. The
aggregator sees every client's ciphertext and cannot decrypt; the key holder can decrypt and
sees only what it is asked to decrypt. Its hygiene, against an aggregator that asks too much:

- one decryption per round, ever: the round is spent before decryption starts, so a request
  that fails half-way cannot be retried with other ciphertexts;
- at least ``min_contributors`` distinct contributors, all members of the cohort;
- the count slot: every upload carries 1.0 in a slot of its own, so the decrypted sum holds the
  number of uploads in it. A request whose count differs from its contributor list (a single
  client's ciphertext passed off as an aggregate, or a sum polluted by a ciphertext under a
  foreign key) is refused and nothing is released. What the count cannot catch: an aggregator
  that adds one client's ciphertext n times; that needs per-client tags sent to the key holder
  directly, and is outside the non-collusion model written down here;
- flooding: Gaussian noise of std ``flood_std`` per entry (from the project's randomness), then
  rounding to multiples of 2^-grid_bits, so the CKKS error pattern, which depends on the secret
  key, never leaves (Li and Micciancio 2021).

The secret key is never serialised: the class refuses pickling, and only the public context
(:meth:`public_context`) leaves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import numpy as np

from privsem.aggregation.ckks import he
from privsem.aggregation.ckks.params import CkksParams
from privsem.errors import ProtocolAbort
from privsem.rng import Randomness


class KeyHolderRefusal(ProtocolAbort):
    """The key holder refused to decrypt or to release."""


class KeyHolder:
    def __init__(self, params: CkksParams, randomness: Randomness,
                 cohort: Sequence[str]) -> None:
        if len(set(cohort)) != len(cohort) or len(cohort) != params.cohort_size:
            raise ValueError(f"key holder: the cohort must list {params.cohort_size} distinct "
                             f"clients, got {list(cohort)}")
        self.params = params
        self.cohort = tuple(cohort)
        self._rng = randomness
        self._ctx = he.new_secret_context(params)
        self._public = he.public_bytes(self._ctx)
        self._top = he.top_parms_id(self._ctx)
        self._spent: dict[int, str] = {}  # round -> how its one decryption ended

    def public_context(self) -> bytes:
        """The context clients encrypt under and the aggregator adds under: no secret key."""
        return self._public

    @property
    def public_digest(self) -> str:
        return he.digest(self._public)

    def decrypt_aggregate(self, *, round: int, ciphertexts: Sequence[bytes],
                          contributors: Sequence[str]) -> np.ndarray:
        """The round's aggregate as a (prompts × dim) float64 matrix with flooding noise,
        rounded. Raises KeyHolderRefusal (and releases nothing) when the round was decrypted
        before, the contributors are too few or not cohort members, or the count slot does not
        match them."""
        p = self.params
        if round in self._spent:
            raise KeyHolderRefusal(f"key holder: round {round} was already decrypted once "
                                   f"({self._spent[round]}); a second request is refused")
        self._spent[round] = "refused"  # spent before anything is decrypted
        names = list(contributors)
        if len(set(names)) != len(names):
            raise KeyHolderRefusal("key holder: the request lists a contributor twice")
        strangers = [c for c in names if c not in self.cohort]
        if strangers:
            raise KeyHolderRefusal(f"key holder: contributors {strangers} are not in the cohort")
        if len(names) < p.min_contributors:
            raise KeyHolderRefusal(f"key holder: {len(names)} contributor(s), below the minimum "
                                   f"{p.min_contributors}: that would decrypt individual "
                                   "uploads")
        vecs = he.load_upload(self._ctx, ciphertexts, p, self._top)
        values = np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vecs])
        count = values[-1]
        if not abs(count - len(names)) < 0.25:
            raise KeyHolderRefusal(f"key holder: the count slot says {count:.3f} uploads, the "
                                   f"request claims {len(names)}: this is not the aggregate of "
                                   "those contributors; nothing is released")
        flat = values[:-1] + self._rng.gaussian(values[:-1].shape, p.flood_std)
        grid = 2.0 ** p.grid_bits
        self._spent[round] = f"released the aggregate of {len(names)} contributors"
        return (np.round(flat * grid) / grid).reshape(p.prompts, p.dim)

    def __reduce__(self) -> NoReturn:
        raise TypeError("the key holder holds the secret key and refuses to be serialised")

