"""CKKS core (TenSEAL): parameters against the 128-bit table (T35), validation of received
ciphertexts (T36), public contexts without the secret key (T37), the key holder's decryption
hygiene (T38) and precision against the plaintext sum (T39)."""

import pickle

import numpy as np
import pytest
import tenseal as ts

from privsem.aggregation.ckks import he
from privsem.aggregation.ckks.keyholder import KeyHolder, KeyHolderRefusal
from privsem.aggregation.ckks.params import SECURITY_128, CkksParams
from privsem.errors import ProtocolAbort
from privsem.rng import SeededRandomness

COHORT = ("a", "b", "c", "d")


def _params(**kw) -> CkksParams:
    base = {"prompts": 3, "dim": 8, "cohort_size": 4, "value_bound": 4.0}
    return CkksParams(**{**base, **kw})


@pytest.fixture(scope="module")
def setup():
    p = _params()
    kh = KeyHolder(p, SeededRandomness(0, "key holder"), COHORT)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    return p, kh, pub, he.top_parms_id(pub)


def _inputs(p, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-p.value_bound, p.value_bound, (p.prompts, p.dim)) for _ in range(n)]


def _fresh_holder(p):
    return KeyHolder(p, SeededRandomness(1, "key holder"), COHORT[:p.cohort_size])


# --------------------------------------------------------------------------- T35
@pytest.mark.parametrize("change, match", [
    ({"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 50, 50, 60)},
     "220 bits exceeds the 218 bits that N = 8192 allows at 128-bit security"),
    ({"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 40, 40)},
     "140 bits exceeds the 109 bits that N = 4096 allows"),
    ({"poly_modulus_degree": 6000}, "not in the 128-bit security table"),
    ({"poly_modulus_degree": 512}, "not in the 128-bit security table"),
    ({"coeff_mod_bit_sizes": (60,)}, "at least 2 primes"),
    ({"coeff_mod_bit_sizes": (61, 40, 60)}, "at least 2 primes of 20 to 60 bits"),
    ({"scale_bits": 60}, r"scale_bits 60 must be in \[20, 60\)"),
])
def test_T35_parameters_outside_the_security_table_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        _params(**change)


def test_T35_a_row_wider_than_the_slots_is_refused():
    with pytest.raises(ValueError, match=r"d = 4100 entries does not fit the N/2 = 4096 slots"):
        _params(dim=4100)


def _primes_summing_to(bound: int) -> list[int]:
    k = max(2, -(-bound // 60))
    base, extra = divmod(bound, k)
    return [base + 1] * extra + [base] * (k - extra)


@pytest.mark.parametrize("n", sorted(n for n in SECURITY_128 if n >= 2048))
def test_T35_each_ring_is_accepted_at_its_bound_and_refused_one_bit_above(n):
    primes = _primes_summing_to(SECURITY_128[n])
    assert sum(primes) == SECURITY_128[n] and all(20 <= b <= 60 for b in primes)
    _params(poly_modulus_degree=n, coeff_mod_bit_sizes=tuple(primes), scale_bits=20)
    over = (*primes[:-1], primes[-1] + 1)
    with pytest.raises(ValueError, match=f"exceeds the {SECURITY_128[n]} bits that N = {n}"):
        _params(poly_modulus_degree=n, coeff_mod_bit_sizes=over, scale_bits=20)


def test_packing_uses_as_few_ciphertexts_as_the_slots_allow():
    p = _params(prompts=24, dim=384)  # 9216 entries + the count slot, 4096 slots each
    assert p.chunks == (4096, 4096, 1025) and p.length == 9217
    assert _params(prompts=10, dim=384, poly_modulus_degree=16384,
                   coeff_mod_bit_sizes=(60, 40, 40, 60)).chunks == (3841,)


# --------------------------------------------------------------------------- T37
def test_T37_the_public_context_has_no_secret_key(setup):
    _p, kh, pub, _ = setup
    assert not pub.is_private() and pub.is_public()
    assert not ts.context_from(kh.public_context()).is_private()
    v = ts.ckks_vector(pub, [1.0, 2.0])
    with pytest.raises(ValueError, match="secret_key"):
        v.decrypt()
    # the aggregator's context is what it loaded: no key to decrypt anyone's upload with
    assert len(kh.public_context()) < len(kh._ctx.serialize(save_secret_key=True,
                                                            save_galois_keys=False,
                                                            save_relin_keys=False))


def test_T37_a_context_that_holds_a_secret_key_is_refused(setup):
    p, kh, _, _ = setup
    leaked = kh._ctx.serialize(save_secret_key=True, save_galois_keys=False,
                               save_relin_keys=False)
    with pytest.raises(he.CiphertextError, match="holds a secret key"):
        he.load_public_context(bytes(leaked), p)


def test_T37_a_context_of_another_key_holder_is_refused(setup):
    p, _, _, _ = setup
    other = _fresh_holder(p)
    with pytest.raises(he.CiphertextError, match="does not match the digest"):
        he.load_public_context(other.public_context(), p, expected_digest=he.digest(b"x"))


def test_T37_the_key_holder_refuses_to_be_pickled(setup):
    with pytest.raises(TypeError, match="refuses to be serialised"):
        pickle.dumps(setup[1])


# --------------------------------------------------------------------------- T36
def _other_context(**kw):
    p = _params(**kw)
    ctx = he.new_secret_context(p)
    return p, ctx


def _bad_ciphertexts(p, pub):
    good = he.encrypt_upload(pub, _inputs(p, 1)[0], p)[0]
    rng = np.random.default_rng(7)
    _p2, other_params = _other_context(coeff_mod_bit_sizes=(60, 40, 60))
    _p3, other_scale = _other_context(scale_bits=30)
    lower = ts.ckks_vector(pub, [1.0] * p.chunks[0]) * ([1.0] * p.chunks[0])  # rescaled: level -1
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "random": rng.integers(0, 256, len(good), dtype=np.uint8).tobytes(),
        "other_parameters": bytes(ts.ckks_vector(other_params, [1.0] * p.chunks[0]).serialize()),
        "other_scale": bytes(ts.ckks_vector(other_scale, [1.0] * p.chunks[0]).serialize()),
        "lower_level": bytes(lower.serialize()),
        "wrong_slot_count": bytes(ts.ckks_vector(pub, [1.0] * (p.chunks[0] - 1)).serialize()),
        "oversized": good + bytes(he.max_ciphertext_bytes(p)),
        "not_bytes": "a string",
    }


@pytest.mark.parametrize("case, match", [
    ("truncated", "could not be parsed"), ("empty", "of 0 bytes is outside"),
    ("random", "could not be parsed"), ("other_parameters", "could not be parsed"),
    ("other_scale", "has scale 2\\^30.00, expected 2\\^40"),
    ("lower_level", "another level of the modulus chain"),
    ("wrong_slot_count", "holds 24 slots, expected 25"), ("oversized", "bytes is outside"),
    ("not_bytes", "is not bytes")])
def test_T36_bad_ciphertexts_get_a_typed_error(setup, case, match):
    p, _, pub, top = setup
    bad = _bad_ciphertexts(p, pub)[case]
    with pytest.raises(he.CiphertextError, match=f"ckks: ciphertext 0 .*{match}|ckks: "
                       f"ciphertext 0 {match}"):
        he.load_ciphertext(pub, bad, p, chunk=0, top=top)


def test_T36_an_unrelinearised_product_is_refused(setup):
    """Ciphertext × ciphertext without relinearisation: 3 polynomials at scale 2^80. The size
    bound refuses it before the polynomial count is even read."""
    p, _, pub, top = setup
    ctx = he.new_secret_context(p)
    ctx.auto_relin, ctx.auto_rescale = False, False
    v = ts.ckks_vector(ctx, [1.0] * p.chunks[0])
    product = bytes((v * v).serialize())
    assert (v * v).ciphertext()[0].size() == 3
    with pytest.raises(he.CiphertextError, match="bytes is outside|not a fresh ciphertext"):
        he.load_ciphertext(pub, product, p, chunk=0, top=top)


def test_T36_an_upload_with_a_chunk_missing_is_refused():
    p = _params(prompts=24, dim=384)
    kh = _fresh_holder(p)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    up = he.encrypt_upload(pub, np.zeros((24, 384)), p)
    with pytest.raises(he.CiphertextError, match="upload of 2 ciphertexts, expected 3"):
        he.load_upload(pub, up[:2], p, he.top_parms_id(pub))


@pytest.mark.parametrize("data, match", [
    ("not bytes", "at most 64 MiB of bytes"), (b"\x00" * 100, "could not be parsed")])
def test_T37_a_context_that_is_not_a_tenseal_context_is_refused(data, match):
    with pytest.raises(he.CiphertextError, match=match):
        he.load_public_context(data, _params())


def test_T37_a_context_without_a_public_key_is_refused(setup):
    p, kh, _, _ = setup
    bare = kh._ctx.serialize(save_public_key=False, save_secret_key=False,
                             save_galois_keys=False, save_relin_keys=False)
    with pytest.raises(he.CiphertextError, match="cannot encrypt"):
        he.load_public_context(bytes(bare), p)


def test_T35_a_context_of_other_parameters_is_refused():
    """A context built for N = 16384 offered for a round of N = 8192."""
    big = _params(poly_modulus_degree=16384)
    other = he.public_bytes(he.new_secret_context(big))
    with pytest.raises(he.CiphertextError, match="ring degree and chain \\(16384, 3\\)"):
        he.load_public_context(other, _params())


@pytest.mark.parametrize("change, match", [
    ({"value_bound": 0.0}, "value_bound must be finite and > 0"),
    ({"value_bound": float("inf")}, "value_bound must be finite and > 0"),
    ({"flood_std": 0.0}, "flood_std must be finite and > 0"),
    ({"flood_std": float("nan")}, "flood_std must be finite and > 0"),
    ({"grid_bits": 0}, "grid_bits 0 must be in"),
    ({"grid_bits": 41}, "grid_bits 41 must be in"),
    ({"min_contributors": 1}, "min_contributors 1 must be in \\[2, 4\\]"),
    ({"min_contributors": 5}, "min_contributors 5 must be in \\[2, 4\\]"),
    ({"prompts": 0}, "prompts must be an integer >= 1"),
    ({"dim": 2.5}, "dim must be an integer >= 1"),
    ({"cohort_size": True}, "cohort_size must be an integer >= 1"),
])
def test_T35_T38_invalid_parameters_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        _params(**change)


@pytest.mark.parametrize("cohort", [("a", "b", "c"), ("a", "a", "b", "c")])
def test_T38_the_key_holder_needs_the_rounds_cohort(cohort):
    with pytest.raises(ValueError, match="the cohort must list 4 distinct clients"):
        KeyHolder(_params(), SeededRandomness(0, "kh"), cohort)


def test_T36_a_bad_upload_is_excluded_and_the_others_sum_exactly(setup):
    p, _, pub, top = setup
    kh = _fresh_holder(p)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    top = he.top_parms_id(pub)
    xs = _inputs(p, 4)
    uploads = {c: he.encrypt_upload(pub, x, p) for c, x in zip(COHORT, xs, strict=True)}
    uploads["c"] = (uploads["c"][0][:500],)
    accepted, rejected = {}, {}
    for c, up in uploads.items():
        try:
            accepted[c] = he.load_upload(pub, up, p, top)
        except he.CiphertextError as e:
            rejected[c] = str(e)
    assert list(rejected) == ["c"] and "could not be parsed" in rejected["c"]
    total = he.add_uploads(list(accepted.values()))
    out = kh.decrypt_aggregate(round=1, ciphertexts=total, contributors=list(accepted))
    want = xs[0] + xs[1] + xs[3]
    assert np.max(np.abs(out - want)) <= p.tolerance(3)


@pytest.mark.parametrize("position", [100, 5000, 40000, -50, -5000])
def test_T36_a_flipped_byte_is_refused_or_never_released(position):
    """CKKS ciphertexts carry no authentication (that is the transport's job): a flipped byte
    either fails to parse (excluded at the aggregator) or makes the sum decrypt to garbage,
    which the count slot refuses. Either way no number is released."""
    p = _params()
    kh = _fresh_holder(p)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    top = he.top_parms_id(pub)
    ups = [he.encrypt_upload(pub, x, p) for x in _inputs(p, 4)]
    g = ups[2][0]
    i = position % len(g)
    ups[2] = (g[:i] + bytes([g[i] ^ 0xFF]) + g[i + 1:],)
    with pytest.raises((he.CiphertextError, KeyHolderRefusal)):
        loaded = [he.load_upload(pub, u, p, top) for u in ups]
        kh.decrypt_aggregate(round=1, ciphertexts=he.add_uploads(loaded), contributors=COHORT)


def test_T36_an_upload_under_a_foreign_key_is_never_released(setup):
    """Same parameters, another secret key: the aggregator cannot tell (no key), the sum
    decrypts to garbage, and the count slot makes the key holder refuse to release it."""
    p, _, _, _ = setup
    kh = _fresh_holder(p)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    top = he.top_parms_id(pub)
    foreign = he.new_secret_context(p)
    xs = _inputs(p, 3)
    ups = [he.encrypt_upload(pub, xs[0], p), he.encrypt_upload(pub, xs[1], p),
           he.encrypt_upload(foreign, xs[2], p)]
    loaded = [he.load_upload(pub, u, p, top) for u in ups]  # indistinguishable here
    total = he.add_uploads(loaded)
    with pytest.raises(KeyHolderRefusal, match="count slot says"):
        kh.decrypt_aggregate(round=1, ciphertexts=total, contributors=["a", "b", "c"])


# --------------------------------------------------------------------------- T38
def _round_total(p, kh, n):
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    top = he.top_parms_id(pub)
    xs = _inputs(p, n)
    ups = [he.encrypt_upload(pub, x, p) for x in xs]
    return xs, ups, he.add_uploads([he.load_upload(pub, u, p, top) for u in ups])


def test_T38_the_aggregate_is_decrypted_once_per_round():
    p = _params()
    kh = _fresh_holder(p)
    xs, _, total = _round_total(p, kh, 4)
    out = kh.decrypt_aggregate(round=1, ciphertexts=total, contributors=COHORT)
    assert np.max(np.abs(out - sum(xs))) <= p.tolerance(4)
    with pytest.raises(KeyHolderRefusal, match="round 1 was already decrypted once"):
        kh.decrypt_aggregate(round=1, ciphertexts=total, contributors=COHORT)


def test_T38_a_single_clients_ciphertext_is_refused_even_when_called_an_aggregate():
    p = _params()
    kh = _fresh_holder(p)
    _, ups, _ = _round_total(p, kh, 4)
    with pytest.raises(KeyHolderRefusal, match="count slot says 1.000 uploads, the request "
                       "claims 2"):
        kh.decrypt_aggregate(round=1, ciphertexts=ups[0], contributors=["a", "b"])
    # and the round is spent: the aggregator cannot come back with the real aggregate
    with pytest.raises(KeyHolderRefusal, match="already decrypted once"):
        kh.decrypt_aggregate(round=1, ciphertexts=ups[0], contributors=["a", "b"])


@pytest.mark.parametrize("contributors, match", [
    (["a"], "1 contributor\\(s\\), below the minimum 2"),
    (["a", "a"], "lists a contributor twice"),
    (["a", "mallory"], "not in the cohort"),
])
def test_T38_requests_that_would_decrypt_individuals_are_refused(contributors, match):
    p = _params()
    kh = _fresh_holder(p)
    _, ups, _ = _round_total(p, kh, 4)
    with pytest.raises(KeyHolderRefusal, match=match):
        kh.decrypt_aggregate(round=1, ciphertexts=ups[0], contributors=contributors)


def test_T38_the_release_is_flooded_and_rounded():
    """The released values lie on the 2^-grid_bits grid, and two key holders (different
    flooding draws) release different values for the same sum, both within the tolerance."""
    p = _params(flood_std=2.0 ** -12, grid_bits=16)
    outs = []
    for seed in (1, 2):
        kh = KeyHolder(p, SeededRandomness(seed, "key holder"), COHORT)
        xs, _, total = _round_total(p, kh, 4)
        out = kh.decrypt_aggregate(round=1, ciphertexts=total, contributors=COHORT)
        assert np.array_equal(out * 2 ** 16, np.round(out * 2 ** 16))
        err = out - sum(xs)
        assert np.max(np.abs(err)) <= p.tolerance(4)
        # the flooding noise dominates the error: its std is close to flood_std
        assert 0.7 * p.flood_std < np.std(err) < 1.3 * p.flood_std
        outs.append(out)
    assert not np.array_equal(outs[0], outs[1])


# --------------------------------------------------------------------------- T39
@pytest.mark.parametrize("n", [2, 4, 16])
def test_T39_worst_case_inputs_stay_within_the_stated_tolerance(n):
    """Every entry of every client at +value_bound (or alternating ±): the largest sums the
    parameters allow, against the plaintext sum."""
    cohort = tuple(f"c{i:02d}" for i in range(n))
    p = _params(cohort_size=n, prompts=24, dim=384, value_bound=64.0)
    kh = KeyHolder(p, SeededRandomness(3, "key holder"), cohort)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    top = he.top_parms_id(pub)
    sign = np.where(np.arange(p.prompts * p.dim) % 2 == 0, 1.0, -1.0).reshape(p.prompts, p.dim)
    xs = [p.value_bound * (sign if i % 2 else np.ones_like(sign)) for i in range(n)]
    loaded = [he.load_upload(pub, he.encrypt_upload(pub, x, p), p, top) for x in xs]
    out = kh.decrypt_aggregate(round=1, ciphertexts=he.add_uploads(loaded), contributors=cohort)
    err = np.max(np.abs(out - sum(xs)))
    assert err <= p.tolerance(n), (err, p.tolerance(n))


def test_T39_parameters_whose_sum_could_wrap_are_refused():
    """'Scale out of bounds' surfaces at set-up as a typed error, not as garbage later."""
    with pytest.raises(ValueError, match="can exceed 2\\^19.*scale out of bounds"):
        _params(cohort_size=64, value_bound=10_000.0)


@pytest.mark.parametrize("bad, match", [
    (np.full((3, 8), 4.5), "exceeds value_bound 4"),
    (np.full((3, 7), 1.0), r"shape \(3, 7\) is not \(3, 8\)"),
    (np.full((3, 8), np.nan), "non-finite"),
])
def test_T39_clients_refuse_uploads_the_parameters_cannot_hold(setup, bad, match):
    p, _, pub, _ = setup
    with pytest.raises(ProtocolAbort, match=match):
        he.encrypt_upload(pub, bad, p)


def test_adding_uploads_leaves_them_unchanged_and_needs_two(setup):
    p, _, pub, top = setup
    kh = _fresh_holder(p)
    pub = he.load_public_context(kh.public_context(), p, kh.public_digest)
    top = he.top_parms_id(pub)
    xs = _inputs(p, 3)
    raw = [he.encrypt_upload(pub, x, p) for x in xs]
    loaded = [he.load_upload(pub, u, p, top) for u in raw]
    total = he.add_uploads(loaded)
    assert [tuple(bytes(v.serialize()) for v in up) for up in loaded] == [tuple(u) for u in raw]
    out = kh.decrypt_aggregate(round=1, ciphertexts=total, contributors=["a", "b", "c"])
    assert np.max(np.abs(out - sum(xs))) <= p.tolerance(3)
    with pytest.raises(ProtocolAbort, match="1 upload\\(s\\) to sum"):
        he.add_uploads(loaded[:1])
