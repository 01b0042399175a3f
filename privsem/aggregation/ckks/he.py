"""CKKS with TenSEAL for the clients and the aggregator: public contexts, encryption of one
upload, validation of received ciphertexts, and their sum. Nothing here holds a secret key;
that is :class:`privsem.aggregation.ckks.keyholder.KeyHolder`'s alone.

Validation (TESTING.md T36): a received ciphertext is parsed against the round's public context
and must be exactly what a fresh encryption under it looks like: 2 polynomials of degree N, NTT
form, not transparent, at the top level of the modulus chain (SEAL's ``parms_id``), at scale
exactly 2^scale_bits, holding the expected number of slots, within a size bound. Truncated or
random bytes, a ciphertext of other parameters, of another level or scale get a
:class:`CiphertextError` naming the fault, and the client is excluded; nothing is summed
silently. A ciphertext under another key with the same parameters cannot be told apart here
(that needs the secret key): it decrypts to garbage in the sum, which the key holder's count
slot check refuses to release.

Rules for changing it: every TenSEAL call on received bytes is wrapped so that a library error
becomes a CiphertextError; public contexts are refused if they hold a secret key (T37).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal as ts

from privsem.aggregation.ckks.params import CkksParams
from privsem.errors import ProtocolAbort

_LIBRARY_ERRORS = (ValueError, RuntimeError, TypeError, OverflowError, MemoryError)


class CiphertextError(ProtocolAbort):
    """A received ciphertext or context is malformed or does not belong to the round."""


def new_secret_context(p: CkksParams) -> ts.Context:
    """A CKKS context holding a fresh secret key (the key holder's)."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=p.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** p.scale_bits
    return ctx


def public_bytes(ctx: ts.Context) -> bytes:
    """``ctx`` serialised without its secret key (and without Galois and relinearisation keys,
    which additions do not need)."""
    return bytes(ctx.serialize(save_public_key=True, save_secret_key=False,
                               save_galois_keys=False, save_relin_keys=False))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def max_ciphertext_bytes(p: CkksParams) -> int:
    """An upper bound on one serialised fresh ciphertext: 2 polynomials × N coefficients × the
    ciphertext primes × 8 bytes, plus 64 KiB of framing."""
    return 2 * p.poly_modulus_degree * (len(p.coeff_mod_bit_sizes) - 1) * 8 + (64 << 10)


def load_public_context(data: bytes, p: CkksParams, expected_digest: str | None = None
                        ) -> ts.Context:
    """The round's public context from ``data``; refuses one that holds a secret key (the key
    holder must never hand it out, T37), one of other parameters, or one whose digest differs
    from the one bound into the round."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > 64 << 20:
        raise CiphertextError("ckks: public context must be at most 64 MiB of bytes")
    if expected_digest is not None and digest(bytes(data)) != expected_digest:
        raise CiphertextError("ckks: public context does not match the digest bound into the "
                              "round (another key holder's, or altered)")
    try:
        ctx = ts.context_from(bytes(data))
        private = ctx.is_private()
    except _LIBRARY_ERRORS as e:
        raise CiphertextError(f"ckks: public context could not be parsed ({e})") from None
    if private:
        raise CiphertextError("ckks: the context holds a secret key; only the key holder may "
                              "hold it (refusing to use it)")
    ctx.global_scale = 2.0 ** p.scale_bits
    # A context without a public key cannot encrypt; one of other parameters encrypts into
    # another ring or chain: a probe encryption checks both.
    try:
        probe = ts.ckks_vector(ctx, [0.0]).ciphertext()[0]
        shape = (probe.poly_modulus_degree(), probe.coeff_modulus_size())
    except _LIBRARY_ERRORS as e:
        raise CiphertextError(f"ckks: public context cannot encrypt ({e})") from None
    want = (p.poly_modulus_degree, len(p.coeff_mod_bit_sizes) - 1)
    if shape != want:
        raise CiphertextError(f"ckks: public context has ring degree and chain {shape}, the "
                              f"round's parameters give {want}")
    return ctx


def top_parms_id(ctx: ts.Context) -> tuple[int, ...]:
    """SEAL's id of the top level of ``ctx``'s modulus chain (where fresh ciphertexts live)."""
    return tuple(ts.ckks_vector(ctx, [0.0]).ciphertext()[0].parms_id())


def encrypt_upload(ctx: ts.Context, matrix: np.ndarray, p: CkksParams) -> tuple[bytes, ...]:
    """One client's upload: ``matrix`` (prompts × dim, already clipped and noised) flattened,
    with the count slot 1.0 appended, encrypted chunk by chunk. Refuses a matrix of the wrong
    shape, with non-finite entries or entries above ``value_bound`` (the sum could wrap)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (p.prompts, p.dim):
        raise ProtocolAbort(f"ckks: upload of shape {m.shape} is not ({p.prompts}, {p.dim})")
    if not np.all(np.isfinite(m)):
        raise ProtocolAbort("ckks: upload has non-finite entries")
    if np.max(np.abs(m), initial=0.0) > p.value_bound:
        raise ProtocolAbort(f"ckks: an entry exceeds value_bound {p.value_bound:g}; the sum "
                            "of the cohort could overflow the first prime")
    flat = np.concatenate([m.reshape(-1), [1.0]])
    out, lo = [], 0
    for n in p.chunks:
        out.append(bytes(ts.ckks_vector(ctx, flat[lo:lo + n].tolist()).serialize()))
        lo += n
    return tuple(out)


def load_ciphertext(ctx: ts.Context, data: Any, p: CkksParams, *, chunk: int,
                    top: Sequence[int]) -> ts.CKKSVector:
    """Chunk ``chunk`` of an upload, validated (see the module docstring)."""
    what = f"ciphertext {chunk}"
    if not isinstance(data, (bytes, bytearray)):
        raise CiphertextError(f"ckks: {what} is not bytes")
    if not 0 < len(data) <= max_ciphertext_bytes(p):
        raise CiphertextError(f"ckks: {what} of {len(data)} bytes is outside (0, "
                              f"{max_ciphertext_bytes(p)}]")
    try:
        vec = ts.ckks_vector_from(ctx, bytes(data))
        cts = vec.ciphertext()
        size = vec.size()
    except _LIBRARY_ERRORS as e:
        raise CiphertextError(f"ckks: {what} could not be parsed ({e})") from None
    if len(cts) != 1:
        raise CiphertextError(f"ckks: {what} holds {len(cts)} ciphertexts, expected 1")
    c = cts[0]
    try:
        facts = (c.size(), c.poly_modulus_degree(), c.is_ntt_form(), c.is_transparent(),
                 tuple(c.parms_id()), float(c.scale))
    except _LIBRARY_ERRORS as e:
        raise CiphertextError(f"ckks: {what} could not be inspected ({e})") from None
    polys, degree, ntt, transparent, parms, scale = facts
    if polys != 2 or degree != p.poly_modulus_degree or not ntt or transparent:
        raise CiphertextError(f"ckks: {what} is not a fresh ciphertext of this ring "
                              f"({polys} polynomials, degree {degree}, NTT {ntt}, "
                              f"transparent {transparent})")
    if parms != tuple(top):
        raise CiphertextError(f"ckks: {what} is at another level of the modulus chain (or of "
                              "other parameters) than a fresh encryption")
    if scale != 2.0 ** p.scale_bits:
        raise CiphertextError(f"ckks: {what} has scale 2^{np.log2(scale):.2f}, expected "
                              f"2^{p.scale_bits}")
    if size != p.chunks[chunk]:
        raise CiphertextError(f"ckks: {what} holds {size} slots, expected {p.chunks[chunk]}")
    return vec


def load_upload(ctx: ts.Context, parts: Sequence[Any], p: CkksParams,
                top: Sequence[int]) -> list[ts.CKKSVector]:
    """All chunks of one upload, validated; CiphertextError on the first fault."""
    if len(parts) != len(p.chunks):
        raise CiphertextError(f"ckks: upload of {len(parts)} ciphertexts, expected "
                              f"{len(p.chunks)}")
    return [load_ciphertext(ctx, b, p, chunk=i, top=top) for i, b in enumerate(parts)]


def add_uploads(uploads: Sequence[Sequence[ts.CKKSVector]]) -> tuple[bytes, ...]:
    """The encrypted sum of validated uploads (all loaded against one context)."""
    if len(uploads) < 2:
        raise ProtocolAbort(f"ckks: {len(uploads)} upload(s) to sum; an aggregate needs 2 or "
                            "more")
    # The first addition makes new vectors (TenSEAL's copy() is ~100× slower than an add);
    # the inputs are never modified.
    acc = [a + b for a, b in zip(uploads[0], uploads[1], strict=True)]
    for up in uploads[2:]:
        for a, v in zip(acc, up, strict=True):
            a.add_(v)
    return tuple(bytes(a.serialize()) for a in acc)
