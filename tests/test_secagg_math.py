"""Masking arithmetic: the no-wrap boundary (T12), clipping out-of-range values (T13), mask
uniformity and key separation (T15), and distributed noise under dropouts (T26)."""

import math

import numpy as np
import pytest
from aggregation_harness import grid_inputs, make_round
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privsem.aggregation.masked.crypto import MaskExpander, keystream
from privsem.aggregation.masked.encoding import (
    MaskingParams,
    decode_sum,
    derive_params,
    encode_matrix,
)
from privsem.errors import ProtocolAbort
from privsem.privacy.analysis import epsilon


def _params(n, bits, R, length=4):
    return MaskingParams(cohort_size=n, length=length, modulus_bits=bits, scale=1.0,
                         value_range=R, clip=1.0, noise_multiplier=0.0, noise_sigma=0.0,
                         placement="local", degree=n - 1, threshold=n // 2 + 1,
                         min_survivors=n // 2 + 1, consistency_check=True)


@settings(deadline=2000, max_examples=60)
@given(n=st.integers(3, 300), bits=st.integers(16, 64))
def test_T12_overflow_boundary_rejected_at_setup_and_exact_just_below(n, bits):
    M = 1 << bits
    r_ok = (M // 2 - 1) // n  # the largest R with 2·n·R < M
    if r_ok < 1:
        return
    p = _params(n, bits, r_ok)
    # Every client at +R (or every one at −R): the extreme sums decode exactly.
    for sign in (1, -1):
        # The extreme values enter through the integer (noise) path, exact for any modulus.
        words = [encode_matrix(np.zeros(4), np.full(4, sign * r_ok, np.int64), p)[0]
                 for _ in range(n)]
        acc = np.zeros(4, dtype=np.uint64)
        for w in words:
            acc = (acc + w.astype(np.uint64)) & np.uint64(M - 1)
        assert np.all(decode_sum(acc, p) == sign * n * r_ok)
    with pytest.raises(ValueError, match="can wrap"):
        _params(n, bits, r_ok + 1)


def test_T12_derived_parameters_never_wrap_for_large_cohorts():
    for n in (3, 64, 256, 4096):
        p = derive_params(cohort_size=n, length=64 * 384, clip=8.0, noise_multiplier=1.0,
                          modulus_bits=32, placement="local", graph="harary", threshold=0.6,
                          min_survivors=0.6, consistency_check=True)
        assert 2 * n * p.value_range < p.modulus
        assert p.value_range >= p.scale * p.clip + 10 * p.noise_sigma


def test_T13_values_beyond_the_range_are_clipped_and_counted_never_wrapped():
    p = _params(3, 16, 1000)
    x = np.array([0.0, 999.0, 5000.0, -7000.0])
    noise = np.array([0, 1, 0, 0], dtype=np.int64)
    words, frac = encode_matrix(x, noise, p)
    assert frac == pytest.approx(2 / 4)  # 5000 and −7000 clipped (999 + 1 = 1000 is inside)
    assert list(decode_sum(words.astype(np.uint64), p)) == [0, 1000, 1000, -1000]
    words2, _ = encode_matrix(x, noise, p)
    assert np.array_equal(words, words2)  # deterministic


def test_T13_clip_fraction_reaches_the_client_stats():
    r = make_round("masked", n=3, clip=2.0)
    x = np.zeros((3, 8))
    x[0, 0] = 2.0
    r.clients["c000"].start(x)
    assert r.clients["c000"].stats["clip_fraction"] == 0.0  # at the clip is inside the range


@pytest.mark.parametrize("bits", [4, 8, 12])
def test_T15_masks_are_uniform_over_the_whole_range_including_the_top_value(bits):
    M = 1 << bits
    ex = MaskExpander(200_000, bits)
    rng = np.random.default_rng(0)
    m = ex.mask(rng.bytes(32))
    counts = np.bincount(m.astype(np.int64), minlength=M)
    assert counts.size == M and counts[M - 1] > 0 and m.max() == M - 1
    _, pval = stats.chisquare(counts)
    assert pval > 1e-4, f"chi-square p = {pval}"


def test_T15_32_bit_masks_are_uniform_in_every_byte():
    ex = MaskExpander(400_000, 32)
    m = ex.mask(bytes(range(32)))
    for shift in (0, 8, 16, 24):
        counts = np.bincount(((m >> shift) & 0xFF).astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4
    assert m.max() > (1 << 32) - (1 << 20)  # values reach the top of [0, 2^32)


def test_T15_keys_with_equal_32_bit_fold_give_unrelated_masks():
    """Flower's SecAgg+ seeded numpy from a 32-bit XOR fold of the key (flwrlabs/flower#7522):
    keys differing by the same word in two positions collided. Here the full key is used."""
    rng = np.random.default_rng(1)
    k1 = bytearray(rng.bytes(32))
    k2 = bytearray(k1)
    flip = rng.bytes(4)
    for pos in (0, 4):  # xor the same word into two 32-bit words: the fold is unchanged
        k2[pos:pos + 4] = bytes(a ^ b for a, b in zip(k2[pos:pos + 4], flip))

    def fold(k):
        return np.bitwise_xor.reduce(np.frombuffer(bytes(k), dtype="<u4"))

    assert fold(k1) == fold(k2) and bytes(k1) != bytes(k2)
    ex = MaskExpander(100_000, 32)
    a, b = ex.mask(bytes(k1)), ex.mask(bytes(k2))
    assert np.count_nonzero(a == b) <= 3  # expected 100000 / 2^32 ≈ 0
    r = np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1]
    assert abs(r) < 0.02
    # The mask is the AES-CTR keystream of the full key, read as little-endian words.
    assert np.array_equal(a, np.frombuffer(keystream(bytes(k1), 400_000), dtype="<u4"))


def test_T15_sub_word_moduli_mask_within_range():
    ex = MaskExpander(10_000, 20)
    acc = np.zeros(10_000, dtype=ex.dtype)
    ex.add(acc, bytes(32), +1)
    ex.add(acc, bytes([1]) * 32, -1)
    ex.reduce(acc)
    assert acc.max() < (1 << 20)


# --------------------------------------------------------------------------------------- T26
def test_T26_distributed_noise_is_accounted_for_min_survivors_shares():
    r = make_round("masked", n=6, noise_multiplier=1.3, placement="distributed")
    p = r.clients["c000"].p
    assert p.placement == "distributed" and p.noise_shares == p.min_survivors == 4
    # Each client adds σ/√m; m shares carry the full σ = z·Δ: the charged ρ ≤ 1/(2z²).
    assert p.noise_sigma == pytest.approx(1.3 * p.sensitivity / math.sqrt(4), rel=1e-6)
    event, detail = r.clients["c000"].release_event()
    assert event.rho <= 1 / (2 * 1.3 ** 2)
    assert detail["noise_shares"] == 4
    eps_charged = epsilon([event], delta=1e-5)
    from privsem.privacy.analysis import gaussian_event
    assert eps_charged <= epsilon([gaussian_event(noise_multiplier=1.3)], delta=1e-5) + 1e-9


def test_T26_clients_refuse_to_unmask_when_fewer_than_the_noise_shares_survive():
    """A server that drops clients after upload cannot get a sum carrying less noise than
    accounted: with fewer than m survivors, honest clients refuse to unmask."""
    import dataclasses

    from privsem.config import MaskedConfig
    from privsem.protocol.messages import UnmaskRequest, decode, encode

    r = make_round("masked", n=6, noise_multiplier=1.0, placement="distributed",
                   settings=MaskedConfig(consistency_check=False))
    r.start(grid_inputs(r))
    srv = r.server
    for c, f in r.first.items():
        srv.receive(c, f)
    reqs = srv.next_requests()  # roster
    for c, q in reqs.items():
        srv.receive(c, r.clients[c].respond(q))
    reqs = srv.next_requests()  # deliveries
    for c, q in reqs.items():
        srv.receive(c, r.clients[c].respond(q))
    reqs = srv.next_requests()  # unmask requests (no consistency round)
    msg = decode(reqs["c000"])
    few = dataclasses.replace(msg, survivors=("c000", "c001", "c002"),
                              dropped=("c003", "c004", "c005"))
    with pytest.raises(ProtocolAbort, match=r"below the minimum 4 \(the noise"):
        r.clients["c000"].respond(encode(few))
    assert isinstance(msg, UnmaskRequest)


def test_T26_sum_of_survivors_carries_at_least_the_planned_noise():
    from privsem.config import MaskedConfig

    z = 0.5
    var = []
    for seed in range(3):
        r = make_round("masked", n=5, prompts=40, dim=50, noise_multiplier=z,
                       placement="distributed", seed=seed,
                       settings=MaskedConfig(min_survivors=0.6, threshold=0.6))
        zero = {c: np.zeros((40, 50)) for c in r.spec.cohort}
        r.start(zero)
        r.run(drop=lambda c, s: c == "c004" and s == "input")  # 4 survivors ≥ m = 3
        res = r.server.finish()
        assert len(res.contributors) == 4
        var.append(res.total.var())
        p = r.clients["c000"].p
        planned = (z * p.sensitivity / p.scale) ** 2
        assert res.noise_variance == pytest.approx(4 / 3 * planned, rel=1e-6)
    # Empirical variance of 2000 entries × 3 rounds within 10% of 4σ²/m.
    assert np.mean(var) == pytest.approx(4 / 3 * planned, rel=0.1)
