"""The conformance suite every key store passes.

A store's test module subclasses :class:`KeyStoreConformance` and provides two fixtures:
``sut`` (a :class:`StoreUnderTest` describing how to open the store, with a right and a wrong
secret) and ``algorithm_id`` (parametrized over the algorithms the store supports).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stellakeys.crypto import Algorithm, PrivateKey, PublicKey, get_algorithm
from stellakeys.errors import KeyStoreError
from stellakeys.keystores import KeyStore, KeyStoreContext, open_key_store

_counter = itertools.count()

#: The software store passphrase the tests use (never a real one).
TEST_PASSPHRASE = "correct horse battery staple (test)"


def unique_key_id(prefix: str = "conf") -> str:
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{os.urandom(3).hex()}"


class NotInRegistry(Algorithm):
    """An algorithm no store knows: generate() must fail naming the supported ones."""

    id = "x-unsupported-test"
    spki_oid = "1.3.6.1.4.1.99999.1"

    def generate(self) -> PrivateKey:
        raise AssertionError("a key store must not call generate() of an unknown algorithm")

    def load_public_der(self, spki_der: bytes) -> PublicKey:
        raise AssertionError

    def load_private_pem(self, pem: bytes, passphrase: bytes | None) -> PrivateKey:
        raise AssertionError


@dataclass
class StoreUnderTest:
    #: URI of the store (a profile's keyStore), opened with ``context`` by open_key_store.
    uri: str
    context: KeyStoreContext
    #: A store whose secret (PIN, passphrase, credentials) is wrong or missing.
    open_with_wrong_secret: Callable[[], KeyStore]
    #: A pinned URI in this store that names no key, derived from a real pinned URI.
    missing_uri: Callable[[str], str]
    #: Algorithm ids the store must support (all of them are tested elsewhere too).
    supported: tuple[str, ...]
    #: Strings that must never show up in a repr or an error message.
    secrets: tuple[str, ...] = ()
    #: False for stores without unique key labels (checked separately where they have them).
    refuses_duplicate_key_ids: bool = True
    stores: list[KeyStore] = field(default_factory=list)

    def open(self) -> KeyStore:
        store = open_key_store(self.uri, self.context)
        self.stores.append(store)
        return store

    def close_all(self) -> None:
        for store in self.stores:
            store.close()
        self.stores.clear()


def openssl_verify(
    openssl: object, tmp: Path, public: PublicKey, signature: bytes, data: bytes
) -> bool:
    """Verify with the OpenSSL 3 CLI; returns False when OpenSSL 3.0 lacks the algorithm."""
    run = openssl.run  # type: ignore[attr-defined]
    pub, sig, msg = tmp / "pub.pem", tmp / "sig.bin", tmp / "msg.bin"
    pub.write_text(public.to_pem())
    sig.write_bytes(signature)
    msg.write_bytes(data)
    alg = public.algorithm.id
    if alg == "ed25519":
        args = ["pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", msg]
        args += ["-sigfile", sig]
    elif alg.startswith("ecdsa-"):
        digest = "-sha256" if alg.endswith("sha256") else "-sha384"
        args = ["dgst", digest, "-verify", pub, "-signature", sig, msg]
    elif alg == "sm2-sm3":
        args = ["dgst", "-sm3", "-verify", pub, "-signature", sig]
        args += ["-sigopt", "distid:1234567812345678", msg]
    else:
        return False  # ML-DSA needs OpenSSL 3.5, GOST the engine: covered by the crypto tests
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace") + proc.stdout.decode()
    bad = bytearray(data + b"!")
    msg.write_bytes(bytes(bad))
    assert run(*args).returncode != 0, "OpenSSL accepted a signature over other data"
    return True


class KeyStoreConformance:
    """Inherit, and provide the ``sut`` and ``algorithm_id`` fixtures."""

    MESSAGE = b"stellakeys conformance \x00\xff message"

    def test_generate_sign_verify(
        self, sut: StoreUnderTest, algorithm_id: str, openssl: object, tmp_path: Path
    ) -> None:
        store = sut.open()
        algorithm = get_algorithm(algorithm_id)
        handle = store.generate(algorithm, unique_key_id())
        public = handle.public_key()
        assert public.algorithm is algorithm
        signature = handle.sign(self.MESSAGE)
        public.verify(signature, self.MESSAGE)
        assert not public.is_valid(signature, self.MESSAGE + b"x")
        # A second signature with the same handle (cached session / decrypted key) verifies too.
        public.verify(handle.sign(b"second"), b"second")
        openssl_verify(openssl, tmp_path, public, signature, self.MESSAGE)

    def test_pinned_uri_reopens_the_same_key(self, sut: StoreUnderTest, algorithm_id: str) -> None:
        store = sut.open()
        handle = store.generate(get_algorithm(algorithm_id), unique_key_id())
        public = handle.public_key()
        uri = handle.uri
        store.close()
        # As a key record is used later: the store comes from the pinned URI itself.
        again = open_key_store(uri, sut.context)
        sut.stores.append(again)
        reopened = again.open(uri)
        assert reopened.uri == uri
        assert reopened.public_key() == public
        public.verify(reopened.sign(self.MESSAGE), self.MESSAGE)
        # ... and from the profile's store URI.
        assert sut.open().open(uri).public_key() == public

    def test_missing_key_is_a_key_store_error(self, sut: StoreUnderTest) -> None:
        store = sut.open()
        handle = store.generate(get_algorithm(sut.supported[0]), unique_key_id())
        with pytest.raises(KeyStoreError):
            store.open(sut.missing_uri(handle.uri))

    def test_wrong_secret_is_a_key_store_error(self, sut: StoreUnderTest) -> None:
        store = sut.open()
        uri = store.generate(get_algorithm(sut.supported[0]), unique_key_id()).uri
        wrong = sut.open_with_wrong_secret()
        sut.stores.append(wrong)
        with pytest.raises(KeyStoreError) as info:
            wrong.open(uri).sign(self.MESSAGE)
        for secret in sut.secrets:
            assert secret not in str(info.value)

    def test_unsupported_algorithm_names_the_supported_ones(self, sut: StoreUnderTest) -> None:
        store = sut.open()
        with pytest.raises(KeyStoreError) as info:
            store.generate(NotInRegistry(), unique_key_id())
        message = str(info.value)
        assert NotInRegistry.id in message
        for alg in sut.supported:
            assert alg in message, f"{alg} missing from: {message}"

    def test_duplicate_key_id_is_refused(self, sut: StoreUnderTest) -> None:
        if not sut.refuses_duplicate_key_ids:
            return
        store = sut.open()
        key_id = unique_key_id()
        first = store.generate(get_algorithm(sut.supported[0]), key_id)
        with pytest.raises(KeyStoreError, match="already exists"):
            store.generate(get_algorithm(sut.supported[0]), key_id)
        # The first key is untouched.
        assert store.open(first.uri).public_key() == first.public_key()

    def test_reprs_and_errors_carry_no_secret(self, sut: StoreUnderTest) -> None:
        store = sut.open()
        handle = store.generate(get_algorithm(sut.supported[0]), unique_key_id())
        for text in (repr(store), repr(handle), str(handle)):
            for secret in sut.secrets:
                assert secret not in text
        with pytest.raises(TypeError):
            import pickle

            pickle.dumps(handle)
