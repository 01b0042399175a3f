"""CKKS encrypted aggregation with a separate key holder (TenSEAL): parameters and the security
check (:mod:`.params`), encryption, validation and addition without a secret key (:mod:`.he`),
and the key holder (:mod:`.keyholder`). Not yet registered as an aggregation back-end: the round
wiring (messages, stages, the ledger) comes with the rest of the CKKS issue.
"""
