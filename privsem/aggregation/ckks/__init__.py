"""CKKS encrypted aggregation with a separate key holder (TenSEAL): parameters and the security
check (:mod:`.params`), encryption, validation and addition without a secret key (:mod:`.he`),
the key holder (:mod:`.keyholder`) and the back-end that puts them in the round
(:mod:`.backend`). Threat model: ``threat_models/ckks.md``.
"""

from privsem.aggregation.base import register
from privsem.aggregation.ckks.backend import (
    CONTEXT,
    KEY_HOLDER,
    PARAMS,
    CkksAggregator,
    CkksBackend,
    CkksClient,
    KeyHolderParty,
    derive_params,
    min_contributors,
)

register("ckks")(CkksBackend)

__all__ = ["CONTEXT", "KEY_HOLDER", "PARAMS", "CkksAggregator", "CkksBackend", "CkksClient",
           "KeyHolderParty", "derive_params", "min_contributors"]
