"""Mechanisms and accounting: DP events, calibration, the embedding release and the ledger."""
