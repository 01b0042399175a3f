"""Cryptographic primitives of the masked back-end, all from ``cryptography`` (OpenSSL).

- Key agreement: X25519 (RFC 7748). A peer key that is not 32 bytes or that gives the all-zero
  shared secret (a low-order point) is refused (TESTING.md T7).
- Key derivation: HKDF-SHA256 (RFC 5869) with the session id as salt and a label naming the
  purpose and the parties as info, so keys of different sessions, purposes or pairs are
  unrelated (T9).
- Share encryption: ChaCha20-Poly1305 (RFC 8439) with a random 96-bit nonce and associated data
  binding session id, sender and recipient (T8, T9).
- Signatures: Ed25519 (RFC 8032), for key adverts and the consistency round (T6).
- Mask expansion: AES-256-CTR keyed with the full 256-bit derived key, read as little-endian
  words and reduced to ``b`` bits by masking, which is exactly uniform on ``[0, 2^b)`` because
  ``2^b`` divides the word size (T15; compare flwrlabs/flower#7522, where a 32-bit fold of the
  key seeded the mask generator).

Secret material is held in :class:`Secret`, which refuses to be pickled, copied or printed.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, NoReturn

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privsem.errors import ProtocolAbort

KEY_BYTES = 32
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw


class Secret:
    """Bytes that must not leave their owner: no pickle, no copy, no repr of the value."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("Secret holds bytes")
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<{len(self._value)} bytes>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("secret material refuses to be serialised")

    def __copy__(self) -> NoReturn:
        raise TypeError("secret material refuses to be copied")

    def __deepcopy__(self, memo: Any) -> NoReturn:
        raise TypeError("secret material refuses to be copied")


def random_secret() -> Secret:
    """A fresh 256-bit secret from OS entropy (self-mask seeds)."""
    return Secret(os.urandom(KEY_BYTES))


class KeyPair:
    """An X25519 key pair whose private half never leaves the object except as a Secret."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._private = private or X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(_RAW, _RAW_PUB)

    @classmethod
    def from_secret(cls, secret: Secret) -> KeyPair:
        return cls(X25519PrivateKey.from_private_bytes(secret.reveal()))

    def secret(self) -> Secret:
        return Secret(self._private.private_bytes(_RAW, _RAW_PRIV,
                                                  serialization.NoEncryption()))

    def agree(self, peer_public: bytes, *, peer: str) -> bytes:
        """X25519 shared secret with ``peer``; refuses malformed and low-order keys (T7)."""
        if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
            raise ProtocolAbort(f"invalid public key of {peer}: expected {KEY_BYTES} bytes")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # OpenSSL refuses an all-zero shared secret (low-order point)
            raise ProtocolAbort(f"invalid public key of {peer}: low-order point "
                                "(all-zero shared secret)") from None
        if shared == bytes(KEY_BYTES):
            raise ProtocolAbort(f"invalid public key of {peer}: all-zero shared secret")
        return shared

    def __reduce__(self) -> NoReturn:
        raise TypeError("key pairs refuse to be serialised")


class Identity:
    """A party's long-term Ed25519 signing key; its public half is registered out of band."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey | None = None) -> None:
        self._private = private or Ed25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(_RAW, _RAW_PUB)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __reduce__(self) -> NoReturn:
        raise TypeError("identity keys refuse to be serialised")


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification; False for any malformed key or signature."""
    if len(public) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def transcript(*parts: str | bytes | int) -> bytes:
    """An unambiguous byte string of ``parts`` (length-prefixed), for signing and HKDF info."""
    out = bytearray()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        out += len(b).to_bytes(4, "little") + b
    return bytes(out)


def derive_key(secret: bytes, *, session_id: str, label: str, parties: tuple[str, ...]) -> bytes:
    """HKDF-SHA256 → 32 bytes, salted by the session id, bound to a purpose and the parties."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES,
                salt=hashlib.sha256(session_id.encode()).digest(),
                info=transcript(b"privsem/secagg/v1", label, *parties)).derive(secret)


def share_ad(session_id: str, src: str, dst: str) -> bytes:
    return transcript(b"privsem/secagg/v1/share", session_id, src, dst)


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305 with a fresh random nonce; returns nonce ‖ ciphertext ‖ tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, sealed: bytes, ad: bytes, *, what: str) -> bytes:
    """Inverse of :func:`seal`; a forged, re-targeted or bit-flipped ciphertext raises (T8)."""
    if len(sealed) < NONCE_BYTES + 16:
        raise ProtocolAbort(f"{what}: ciphertext too short")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        raise ProtocolAbort(f"{what}: authentication failed (forged, re-targeted or "
                            "corrupted ciphertext)") from None


def word_dtype(bits: int) -> type[np.unsignedinteger[Any]]:
    """The unsigned word that holds values mod 2^bits (bits ≤ 64)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"modulus bits must be in [1, 64], got {bits}")
    return np.uint32 if bits <= 32 else np.uint64


def keystream(key: bytes, nbytes: int) -> bytes:
    """``nbytes`` of AES-256-CTR keystream under ``key`` (zero IV; each key is used once)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


CHUNK_WORDS = 16384  # 64 KiB of uint32 (128 KiB of uint64): stays in cache between key and add
_ZERO_BLOCK = bytes(CHUNK_WORDS * 8)


class MaskExpander:
    """Expands 256-bit keys into masks mod 2^bits and accumulates them in place.

    The keystream is produced in chunks of :data:`CHUNK_WORDS` words into one small reused
    buffer (``update_into`` from a shared zero block) and added to the accumulator while the
    chunk is still in cache, so masking costs one AES-CTR pass plus one in-cache add per key,
    with no allocation that grows with the vector.
    """

    def __init__(self, length: int, bits: int) -> None:
        self.length, self.bits = length, bits
        self.dtype = word_dtype(bits)
        self.modulus_mask = self.dtype((1 << bits) - 1)
        self._width = np.dtype(self.dtype).itemsize
        self._out = bytearray(CHUNK_WORDS * self._width + 15)  # update_into needs 15 spare
        self._words = np.frombuffer(memoryview(self._out)[:CHUNK_WORDS * self._width],
                                    dtype=self.dtype)

    def mask(self, key: bytes) -> np.ndarray:
        """A fresh array: the mask of ``key``, uniform on [0, 2^bits)."""
        acc = np.zeros(self.length, dtype=self.dtype)
        self.add(acc, key, +1)
        return acc

    def add(self, acc: np.ndarray, key: bytes, sign: int) -> None:
        """``acc += sign · mask(key)`` mod 2^bits, in place (``acc`` has ``self.dtype``)."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"mask key must be {KEY_BYTES} bytes, got {len(key)}")
        if acc.dtype != self.dtype or acc.shape != (self.length,):
            raise ValueError(f"mask accumulator must be {np.dtype(self.dtype)}({self.length},)")
        enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        op = np.add if sign > 0 else np.subtract
        zeros = memoryview(_ZERO_BLOCK)
        for lo in range(0, self.length, CHUNK_WORDS):
            hi = min(lo + CHUNK_WORDS, self.length)
            enc.update_into(zeros[:(hi - lo) * self._width], self._out)
            words = self._words[:hi - lo]
            if self.bits not in (32, 64):
                np.bitwise_and(words, self.modulus_mask, out=words)
            op(acc[lo:hi], words, out=acc[lo:hi])

    def reduce(self, acc: np.ndarray) -> None:
        if self.bits not in (32, 64):
            np.bitwise_and(acc, self.modulus_mask, out=acc)
