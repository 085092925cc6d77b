"""Ed25519 verification through libsodium with OpenSSL as the authority (issue 20).

``stellakeys.crypto._pyca`` asks libsodium (PyNaCl) first because it is about twice as fast,
and asks OpenSSL (``cryptography``) again whenever libsodium refuses. That keeps every verdict
OpenSSL's only if libsodium never accepts what OpenSSL refuses. These tests hold both halves
against ``cryptography``'s own verify, the independent reference, on honest signatures, on
hypothesis-mutated ones and on the hand-made edge cases where the two libraries differ or
could: a non-canonical S (S + L) and a small-order R (the identity, the one small-order R a
signature under a prime-order key can have).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from stellakeys.crypto import _pyca
from stellakeys.crypto._pyca import _sodium_verifier
from stellakeys.errors import InvalidSignatureError

#: The prime order of the base point (RFC 8032 section 5.1).
L = 2**252 + 27742317777372353535851937790883648493
IDENTITY = b"\x01" + bytes(31)

sodium_accepts = _sodium_verifier()


@pytest.fixture(autouse=True)
def sodium_loaded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Key verification as a long-running process does it: libsodium loaded (a fresh process
    loads it after SODIUM_AFTER verifications, test_libsodium_is_loaded_only_after...)."""
    monkeypatch.setattr(_pyca, "_sodium_check", sodium_accepts)
    yield


def raw_public(seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def ours_accepts(seed: bytes, signature: bytes, message: bytes) -> bool:
    key = _pyca.ED25519.from_seed(seed).public_key()
    try:
        key.verify(signature, message)
    except InvalidSignatureError:
        return False
    return True


def identity_r_signature(seed: bytes, message: bytes) -> bytes:
    """R = identity, S = k*a mod L: [S]B - [k]A is the identity, so the cofactorless check of
    OpenSSL accepts it; libsodium refuses any small-order R."""
    digest = hashlib.sha512(seed).digest()
    a = int.from_bytes(digest[:32], "little")
    a = (a & ((1 << 254) - 8)) | (1 << 254)  # RFC 8032 clamping
    k = int.from_bytes(hashlib.sha512(IDENTITY + raw_public(seed) + message).digest(), "little")
    return IDENTITY + (k % L * a % L).to_bytes(32, "little")


def with_s_plus_l(signature: bytes) -> bytes:
    s = int.from_bytes(signature[32:], "little") + L  # < 2**256: still 32 bytes
    return signature[:32] + s.to_bytes(32, "little")


def test_the_libraries_differ_on_a_small_order_r_and_the_verdict_is_openssls() -> None:
    seed, message = bytes(range(32)), b"in-toto statement"
    signature = identity_r_signature(seed, message)
    assert openssl_accepts(raw_public(seed), signature, message)
    assert not sodium_accepts(signature, message, raw_public(seed))
    # libsodium's refusal is asked again of OpenSSL: the verdict did not change.
    assert ours_accepts(seed, signature, message)
    assert not ours_accepts(seed, signature, message + b"!")


def test_a_non_canonical_s_is_refused_by_both() -> None:
    seed, message = bytes(range(1, 33)), b"payload"
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    assert ours_accepts(seed, signature, message)
    forged = with_s_plus_l(signature)  # the same group equation, another encoding of S
    assert not openssl_accepts(raw_public(seed), forged, message)
    assert not sodium_accepts(forged, message, raw_public(seed))
    assert not ours_accepts(seed, forged, message)


MUTATIONS = ("none", "flip-signature", "flip-message", "s-plus-l", "identity-r", "swap-halves")


@settings(max_examples=300, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    message=st.binary(max_size=300),
    mutation=st.sampled_from(MUTATIONS),
    bit=st.integers(min_value=0, max_value=511),
)
def test_libsodium_never_accepts_what_openssl_refuses(
    seed: bytes, message: bytes, mutation: str, bit: int
) -> None:
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    if mutation == "flip-signature":
        signature = (int.from_bytes(signature, "little") ^ (1 << bit)).to_bytes(64, "little")
    elif mutation == "flip-message":
        message = (message or b"\x00")[:-1] + bytes([(message or b"\x00")[-1] ^ (1 << bit % 8)])
    elif mutation == "s-plus-l":
        signature = with_s_plus_l(signature)
    elif mutation == "identity-r":
        signature = identity_r_signature(seed, message)
    elif mutation == "swap-halves":
        signature = signature[32:] + signature[:32]
    public = raw_public(seed)
    reference = openssl_accepts(public, signature, message)
    if sodium_accepts(signature, message, public):
        assert reference, (seed.hex(), message.hex(), signature.hex())
    assert ours_accepts(seed, signature, message) is reference
    if mutation == "none":
        # Honest signatures are libsodium's to accept: else the fast path would never be taken
        # and every verification would quietly cost both checks.
        assert reference and sodium_accepts(signature, message, public)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_a_signature_of_the_wrong_length_is_refused_before_either_library(length: int) -> None:
    with pytest.raises(InvalidSignatureError, match="64 bytes"):
        _pyca.ED25519.from_seed(bytes(32)).public_key().verify(bytes(length), b"m")


def test_libsodium_is_loaded_only_after_enough_verifications() -> None:
    """A one-proof ``stellaops verify`` does not pay PyNaCl's import (start-up, issue 20); a
    process that keeps verifying switches to it, and the verdicts do not change."""
    code = """
import sys
from stellakeys.crypto import get_algorithm
from stellakeys.crypto._pyca import SODIUM_AFTER
key = get_algorithm("ed25519").from_seed(bytes(32))
public, signature = key.public_key(), key.sign(b"m")
for _ in range(SODIUM_AFTER):
    public.verify(signature, b"m")
assert "nacl" not in sys.modules, "loaded too early"
public.verify(signature, b"m")
assert "nacl.bindings" in sys.modules, "never loaded"
from stellakeys.errors import InvalidSignatureError
try:
    public.verify(signature, b"n")
except InvalidSignatureError:
    print("ok")
"""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_large_messages_go_to_openssl_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """From SODIUM_MAX_MESSAGE bytes on OpenSSL is as fast and libsodium's buffers cost more
    (decision 0031); below it libsodium is asked first."""
    asked: list[int] = []

    def spy(signature: bytes, data: bytes, raw: bytes) -> bool:
        asked.append(len(data))
        return sodium_accepts(signature, data, raw)

    monkeypatch.setattr(_pyca, "_sodium_check", spy)
    key = _pyca.ED25519.from_seed(bytes(32))
    for size in (0, _pyca.SODIUM_MAX_MESSAGE - 1, _pyca.SODIUM_MAX_MESSAGE, 100_000):
        message = bytes(size)
        key.public_key().verify(key.sign(message), message)
        with pytest.raises(InvalidSignatureError):
            key.public_key().verify(key.sign(message), message + b"x")
    assert asked == [0, 1, _pyca.SODIUM_MAX_MESSAGE - 1]  # not MAX - 1 + 1 bytes, nor more
