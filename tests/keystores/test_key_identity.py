"""Key identity is checked at use (decision 0016): a key store's key must be the key recorded
for its key id, when opened and before it signs, and every signature is verified with the
recorded public key before a proof is stored. Attacks by a token administrator (re-initialised
SoftHSM2 token, planted key under the same CKA_ID and label), someone with write access to the
software store or the database, and a faulty or hostile key store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from softhsm import SO_PIN, SoftHsm

from stellakeys.crypto import Algorithm, PublicKey, get_algorithm
from stellakeys.errors import KeyIdentityError
from stellakeys.keys import KeyRecord
from stellakeys.keystores import KeyStoreContext
from stellakeys.keystores.pkcs11 import Pkcs11Uri
from stellakeys.manager import KeyManager
from stellakeys.profiles import SignerConfig
from stellakeys.storage.memory import MemoryStore


def _config(key_store: str, algorithm: str = "ecdsa-p256-sha256") -> SignerConfig:
    return SignerConfig.from_dict(
        {"signer": {"profiles": {"default": {"algorithm": algorithm, "keyStore": key_store}}}}
    )


def _manager(store: MemoryStore, key_store: str, home: Path, **kw: Any) -> KeyManager:
    return KeyManager(
        store, config=_config(key_store), keystore_context=KeyStoreContext(home=home), **kw
    )


def _no_proof_after(store: MemoryStore, proofs_before: int) -> None:
    with store.read() as tx:
        assert len(list(tx.iter_proofs())) == proofs_before
        signed = [e for e in tx.audit_events() if e.event_type == "PROOF_SIGNED"]
    assert len(signed) == proofs_before


# --- PKCS#11: the token administrator ---------------------------------------------------------

_PLANT = """
import sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
module, pin, label, cka_hex, copy_point_hex = sys.argv[1:6]
cka = bytes.fromhex(cka_hex)
token = pkcs11.lib(module).get_token(token_label="R")
params = bytes.fromhex("06082a8648ce3d030107")
with token.open(rw=True, user_pin=pin) as s:
    public, _ = s.generate_keypair(
        KeyType.EC, mechanism=Mechanism.EC_KEY_PAIR_GEN, store=True,
        public_template={Attribute.TOKEN: True, Attribute.EC_PARAMS: params,
                         Attribute.ID: cka, Attribute.LABEL: label, Attribute.VERIFY: True},
        private_template={Attribute.TOKEN: True, Attribute.PRIVATE: True,
                          Attribute.SENSITIVE: True, Attribute.ID: cka,
                          Attribute.LABEL: label, Attribute.SIGN: True})
    if copy_point_hex:
        # Cover the tracks: a public object that shows the recorded key's point.
        public.destroy()
        s.create_object({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC,
                         Attribute.TOKEN: True, Attribute.EC_PARAMS: params,
                         Attribute.EC_POINT: bytes.fromhex(copy_point_hex),
                         Attribute.ID: cka, Attribute.LABEL: label, Attribute.VERIFY: True})
"""


def _reinit_and_plant(hsm: SoftHsm, record: KeyRecord, *, copy_public: bool) -> None:
    """What a token administrator can do: re-initialise the token (same slot, same serial)
    and create a different key under the recorded CKA_ID and label."""
    token = hsm["R"]
    subprocess.run(
        [
            *("softhsm2-util", "--init-token", "--slot", str(token.slot_id), "--label", "R"),
            *("--so-pin", SO_PIN, "--pin", token.pin),
        ],
        check=True,
        capture_output=True,
    )
    assert record.key_store_uri is not None
    cka = Pkcs11Uri.parse(record.key_store_uri).id
    assert cka is not None
    point = ""
    if copy_public:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        raw = load_pem_public_key(record.public_key_pem.encode()).public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        point = (bytes([0x04, len(raw)]) + raw).hex()  # DER OCTET STRING, as tokens store it
    done = subprocess.run(
        [sys.executable, "-c", _PLANT, hsm.module, token.pin, record.key_id, cka.hex(), point],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def hsm_r(softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    monkeypatch.delenv("STELLAKEYS_PKCS11_PIN_FILE", raising=False)
    monkeypatch.setenv("STELLAKEYS_PKCS11_PIN", softhsm["R"].pin)
    monkeypatch.setenv("STELLAKEYS_PKCS11_MODULE", softhsm.module)
    return softhsm


@pytest.mark.parametrize("process", ["long-lived", "new"])
def test_reinitialised_token_with_a_planted_key_cannot_sign(
    hsm_r: SoftHsm, tmp_path: Path, process: str
) -> None:
    store = MemoryStore()
    manager = _manager(store, "hsm://pkcs11/token/R", tmp_path)
    key_id = f"planted-{process}"
    record = manager.generate_key(key_id)
    manager.sign(b"before", key_id, "text/plain")  # the long-lived process caches its handle

    _reinit_and_plant(hsm_r, record, copy_public=False)
    signer = (
        manager if process == "long-lived" else _manager(store, "hsm://pkcs11/token/R", tmp_path)
    )
    with pytest.raises(KeyIdentityError) as refused:
        signer.sign(b"after", key_id, "text/plain")
    message = str(refused.value)
    assert record.fingerprint in message
    assert refused.value.found.startswith("SHA256:") and refused.value.found in message
    assert refused.value.found != record.fingerprint
    _no_proof_after(store, 1)


def test_planted_key_behind_a_copied_public_object_is_caught_by_the_self_check(
    hsm_r: SoftHsm, tmp_path: Path
) -> None:
    """The administrator also replaces the public object with the recorded key's point, so
    every comparison of public keys passes: only verifying the signature catches it."""
    store = MemoryStore()
    manager = _manager(store, "hsm://pkcs11/token/R", tmp_path)
    record = manager.generate_key("planted-copied")
    _reinit_and_plant(hsm_r, record, copy_public=True)
    fresh = _manager(store, "hsm://pkcs11/token/R", tmp_path)
    with pytest.raises(KeyIdentityError) as refused:
        fresh.sign(b"after", "planted-copied", "text/plain")
    assert record.fingerprint in str(refused.value)
    assert "does not verify" in str(refused.value)
    _no_proof_after(store, 0)


# --- software store: write access to the key directory ------------------------------------------


def test_replaced_software_key_file_is_refused_naming_both_fingerprints(
    tmp_path: Path, passphrase_env: str
) -> None:
    store = MemoryStore()
    manager = _manager(store, "software://ident", tmp_path)
    record = manager.generate_key("k1")
    other = _manager(MemoryStore(), "software://other", tmp_path).generate_key("k1")
    key_file = tmp_path / "keys" / "ident" / "k1.pem"
    key_file.write_bytes((tmp_path / "keys" / "other" / "k1.pem").read_bytes())

    fresh = _manager(store, "software://ident", tmp_path)
    with pytest.raises(KeyIdentityError) as refused:
        fresh.sign(b"x", "k1", "text/plain")
    assert record.fingerprint in str(refused.value)
    assert other.fingerprint in str(refused.value)
    _no_proof_after(store, 0)


# --- KMS: a database writer points the record at another key ------------------------------------


def test_kms_record_pointing_at_another_key_is_refused_when_opened(
    kms_env: str, tmp_path: Path
) -> None:
    source = MemoryStore()
    maker = _manager(source, "kms://aws", tmp_path)
    mine = maker.generate_key("kms-mine")
    theirs = maker.generate_key("kms-theirs")
    # The record as a hostile database writer leaves it: my key id and public key, their URI.
    store = MemoryStore()
    with store.transaction() as tx:
        tx.insert_key(attrs.evolve(mine, key_store_uri=theirs.key_store_uri))
    with pytest.raises(KeyIdentityError) as refused:
        _manager(store, "kms://aws", tmp_path).sign(b"x", "kms-mine", "text/plain")
    assert mine.fingerprint in str(refused.value) and theirs.fingerprint in str(refused.value)
    _no_proof_after(store, 0)


# --- a faulty or hostile key store: the self-check before storing ---------------------------------


@attrs.frozen
class _FaultyHandle:
    """Reports the right public key, returns a signature by another key (a fault, a swap)."""

    uri: str
    reported: PublicKey
    actual: Any

    def sign(self, data: bytes, /) -> bytes:
        signature: bytes = self.actual.sign(data)
        return signature

    def public_key(self) -> PublicKey:
        return self.reported


class _FaultyStore:
    def __init__(self) -> None:
        self.honest = get_algorithm("ed25519").generate()

    def generate(self, algorithm: Algorithm, key_id: str) -> _FaultyHandle:
        return _FaultyHandle(f"faulty://x/{key_id}", self.honest.public_key(), self.honest)

    def open(self, uri: str) -> _FaultyHandle:
        # From now on it signs with another key while reporting the recorded one.
        other = get_algorithm("ed25519").generate()
        return _FaultyHandle(uri, self.honest.public_key(), other)

    def close(self) -> None:
        pass


def test_sign_verifies_its_own_signature_before_storing(tmp_path: Path) -> None:
    faulty = _FaultyStore()
    store = MemoryStore()
    config = _config("faulty://x", "ed25519")

    def opener(uri: str, context: KeyStoreContext) -> _FaultyStore:
        return faulty

    manager = KeyManager(
        store,
        config=config,
        keystore_context=KeyStoreContext(home=tmp_path),
        open_key_store=opener,  # type: ignore[arg-type]
    )
    record = manager.generate_key("k1")
    manager.sign(b"honest", "k1", "text/plain")  # the generated handle signs honestly
    fresh = KeyManager(
        store,
        config=config,
        keystore_context=KeyStoreContext(home=tmp_path),
        open_key_store=opener,  # type: ignore[arg-type]
    )
    with pytest.raises(KeyIdentityError) as refused:
        fresh.sign(b"faulty", "k1", "text/plain")
    assert record.fingerprint in str(refused.value)
    _no_proof_after(store, 1)
