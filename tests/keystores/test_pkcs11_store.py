"""The PKCS#11 key store on real SoftHSM2 tokens."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from keystore_conformance import KeyStoreConformance, StoreUnderTest, unique_key_id
from softhsm import SoftHsm

from stellakeys.crypto import get_algorithm
from stellakeys.errors import KeyStoreError
from stellakeys.keystores import KeyStoreContext, SecretSource, open_key_store
from stellakeys.keystores.pkcs11 import _SESSIONS, Pkcs11KeyStore, Pkcs11Uri

PKCS11_ALGORITHMS = ("ecdsa-p256-sha256", "ecdsa-p384-sha384", "ed25519")


class TestPkcs11Conformance(KeyStoreConformance):
    @pytest.fixture(params=PKCS11_ALGORITHMS)
    def algorithm_id(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def sut(self, softhsm: SoftHsm, pkcs11_pin: str, tmp_path: Path) -> Iterator[StoreUnderTest]:
        token = softhsm["T"]

        def wrong() -> Pkcs11KeyStore:
            source = SecretSource("PIN", "X_WRONG_PIN", environ={"X_WRONG_PIN": "0000-wrong"})
            return Pkcs11KeyStore(softhsm.module, Pkcs11Uri(token="T"), source)

        def missing(uri: str) -> str:
            return uri.replace(";id=%", ";id=%ff%", 1)

        sut = StoreUnderTest(
            uri=f"hsm://pkcs11/slot/{token.slot_id}",
            context=KeyStoreContext(home=tmp_path),
            open_with_wrong_secret=wrong,
            missing_uri=missing,
            supported=PKCS11_ALGORITHMS,
            secrets=(token.pin, "0000-wrong"),
        )
        yield sut
        sut.close_all()


@pytest.fixture
def store(softhsm: SoftHsm, pkcs11_pin: str, tmp_path: Path) -> Iterator[Pkcs11KeyStore]:
    ks = Pkcs11KeyStore.from_uri("pkcs11:token=T", KeyStoreContext(home=tmp_path))
    yield ks
    ks.close()


def test_keys_are_sensitive_non_extractable_token_objects(store: Pkcs11KeyStore) -> None:
    from pkcs11 import Attribute, ObjectClass

    for alg in PKCS11_ALGORITHMS:
        handle = store.generate(get_algorithm(alg), unique_key_id("attrs"))
        shared = store._session()

        def attributes(session: object, cka_id: bytes = handle.cka_id) -> dict[str, object]:
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=cka_id)  # type: ignore[attr-defined]
            return {
                name: key[getattr(Attribute, name)]
                for name in (
                    "TOKEN",
                    "PRIVATE",
                    "SENSITIVE",
                    "EXTRACTABLE",
                    "ALWAYS_SENSITIVE",
                    "NEVER_EXTRACTABLE",
                    "LABEL",
                )
            }

        got = shared.call("test", attributes)
        assert got == {
            "TOKEN": True,
            "PRIVATE": True,
            "SENSITIVE": True,
            "EXTRACTABLE": False,
            "ALWAYS_SENSITIVE": True,
            "NEVER_EXTRACTABLE": True,
            "LABEL": handle.key_id,
        }
        assert len(handle.cka_id) == 16


def test_pinned_uri_is_rfc7512_with_serial_and_random_id(
    store: Pkcs11KeyStore, softhsm: SoftHsm
) -> None:
    handle = store.generate(get_algorithm("ecdsa-p256-sha256"), "key-2025-prod-" + unique_key_id())
    serial = softhsm["T"].serial
    assert handle.uri.startswith(f"pkcs11:token=T;serial={serial};object=key-2025-prod-")
    assert handle.uri.endswith(";type=private")
    parsed = Pkcs11Uri.parse(handle.uri)
    assert parsed.id == handle.cka_id and parsed.serial == serial


def test_a_later_key_with_the_same_label_cannot_take_over(
    store: Pkcs11KeyStore, softhsm: SoftHsm
) -> None:
    # The store refuses duplicate labels; a key made with the same label by another tool
    # still has another CKA_ID, so the pinned URI keeps naming the original.
    key_id = unique_key_id("label")
    original = store.generate(get_algorithm("ed25519"), key_id)
    from pkcs11 import KeyType, Mechanism

    def plant(session: object) -> None:
        session.generate_keypair(  # type: ignore[attr-defined]
            KeyType.EC_EDWARDS,
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            store=True,
            label=key_id,
            id=b"\x01\x02",
            public_template={__import__("pkcs11").Attribute.EC_PARAMS: bytes.fromhex("06032b6570")},
        )

    store._session().call("plant", plant)
    assert store.open(original.uri).public_key() == original.public_key()


@pytest.mark.parametrize(
    "form",
    [
        "hsm://pkcs11/slot/{slot}",
        "hsm://pkcs11/token/T",
        "hsm://pkcs11/serial/{serial}",
        "pkcs11:token=T",
        "pkcs11:serial={serial}",
        "pkcs11:slot-id={slot}",
        "pkcs11:token=T?module-path={module}",
    ],
)
def test_token_selection_forms(
    form: str, softhsm: SoftHsm, pkcs11_pin: str, tmp_path: Path
) -> None:
    token = softhsm["T"]
    uri = form.format(slot=token.slot_id, serial=token.serial, module=softhsm.module)
    ks = open_key_store(uri, KeyStoreContext(home=tmp_path))
    try:
        handle = ks.generate(get_algorithm("ed25519"), unique_key_id("sel"))
        assert f"serial={token.serial}" in handle.uri
        assert ("module-path=" in handle.uri) == ("module-path" in form)
        handle.public_key().verify(handle.sign(b"x"), b"x")
    finally:
        ks.close()


def test_no_matching_token_lists_the_tokens(
    softhsm: SoftHsm, pkcs11_pin: str, tmp_path: Path
) -> None:
    ks = open_key_store("hsm://pkcs11/token/nope", KeyStoreContext(home=tmp_path))
    with pytest.raises(KeyStoreError) as info:
        ks.generate(get_algorithm("ed25519"), "k")
    assert "'T'" in str(info.value) and softhsm["T"].serial in str(info.value)


def test_wrong_pin_reaches_the_token_and_is_named(softhsm: SoftHsm, tmp_path: Path) -> None:
    source = SecretSource("PIN", "P", environ={"P": "0000-wrong"})
    ks = Pkcs11KeyStore(softhsm.module, Pkcs11Uri(token="W"), source)
    with pytest.raises(KeyStoreError, match="wrong PIN for PKCS#11 token 'W'") as info:
        ks.generate(get_algorithm("ed25519"), "k")
    assert "0000-wrong" not in str(info.value)
    right = Pkcs11KeyStore(
        softhsm.module,
        Pkcs11Uri(token="W"),
        SecretSource("PIN", "P", environ={"P": softhsm["W"].pin}),
    )
    right.generate(get_algorithm("ed25519"), unique_key_id("w"))
    right.close()


def test_pin_value_in_uri_is_refused() -> None:
    with pytest.raises(KeyStoreError, match="pin-value"):
        Pkcs11Uri.parse("pkcs11:token=T?pin-value=1234")


def test_pin_source_file(softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STELLAKEYS_PKCS11_PIN", raising=False)
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm["T"].pin + "\n")
    pin_file.chmod(0o600)
    ks = open_key_store(
        f"pkcs11:token=T?pin-source=file:{pin_file}&module-path={softhsm.module}",
        KeyStoreContext(home=tmp_path),
    )
    try:
        ks.generate(get_algorithm("ed25519"), unique_key_id("pinfile"))
    finally:
        ks.close()


def test_no_pin_says_how_to_provide_one(
    softhsm: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STELLAKEYS_PKCS11_PIN", raising=False)
    monkeypatch.delenv("STELLAKEYS_PKCS11_PIN_FILE", raising=False)
    ks = open_key_store("pkcs11:token=W", KeyStoreContext(home=tmp_path))
    with pytest.raises(KeyStoreError, match=r"\$STELLAKEYS_PKCS11_PIN_FILE"):
        ks.generate(get_algorithm("ed25519"), "k")


def test_hsm_signatures_verify_in_openssl_pkeyutl(
    store: Pkcs11KeyStore, openssl: object, tmp_path: Path
) -> None:
    handle = store.generate(get_algorithm("ecdsa-p384-sha384"), unique_key_id("ossl"))
    data = b"openssl pkeyutl over a SHA-384 digest"
    (tmp_path / "pub.pem").write_text(handle.public_key().to_pem())
    (tmp_path / "sig").write_bytes(handle.sign(data))
    import hashlib

    (tmp_path / "dgst").write_bytes(hashlib.sha384(data).digest())
    proc = openssl.run(  # type: ignore[attr-defined]
        "pkeyutl", "-verify", "-pubin", "-inkey", tmp_path / "pub.pem",
        "-in", tmp_path / "dgst", "-sigfile", tmp_path / "sig",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


# --- sessions ------------------------------------------------------------------------------------


def test_eight_threads_share_one_session(store: Pkcs11KeyStore) -> None:
    handles = [
        store.generate(get_algorithm(alg), unique_key_id("thr"))
        for alg in ("ecdsa-p256-sha256", "ed25519")
    ]
    results: list[tuple[int, bytes, bytes]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(50):
                data = b"thread %d message %d" % (n, i)
                signature = handles[n % 2].sign(data)
                with lock:
                    results.append((n % 2, data, signature))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 400
    for which, data, signature in results:
        handles[which].public_key().verify(signature, data)
    shared = store._session()
    assert shared.reopened == 0


def test_session_is_reopened_after_it_is_closed_under_the_store(
    store: Pkcs11KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    handle = store.generate(get_algorithm("ecdsa-p256-sha256"), unique_key_id("reopen"))
    shared = store._session()
    before = shared.reopened
    shared.session.close()  # as if the token or another library dropped it (logs out too)
    signature = handle.sign(b"after the session was closed")
    handle.public_key().verify(signature, b"after the session was closed")
    assert shared.reopened == before + 1
    assert "re-opening" in caplog.text
    assert softhsm_pin_not_in(caplog.text)


def softhsm_pin_not_in(text: str) -> bool:
    from softhsm import TOKENS

    return all(pin not in text for pin in TOKENS.values())


def test_stores_on_one_token_share_the_login_and_close_cleanly(
    softhsm: SoftHsm, pkcs11_pin: str, tmp_path: Path
) -> None:
    context = KeyStoreContext(home=tmp_path)
    a = open_key_store("pkcs11:token=T", context)
    b = open_key_store(f"hsm://pkcs11/slot/{softhsm['T'].slot_id}", context)
    handle = a.generate(get_algorithm("ed25519"), unique_key_id("share"))
    reopened = b.open(handle.uri)
    assert a._session() is b._session()  # type: ignore[attr-defined]
    a.close()
    reopened.public_key().verify(reopened.sign(b"b still works"), b"b still works")
    b.close()
    with pytest.raises(KeyStoreError, match="closed"):
        reopened.sign(b"x")
    # The last user logged out and closed the shared session.
    assert not [k for k in _SESSIONS if k[1] == softhsm["T"].serial]


def test_hsm_pinned_form_opens_the_same_key(store: Pkcs11KeyStore, softhsm: SoftHsm) -> None:
    handle = store.generate(get_algorithm("ecdsa-p256-sha256"), unique_key_id("hsmform"))
    slot = softhsm["T"].slot_id
    uri = f"hsm://pkcs11/slot/{slot}/id/{handle.cka_id.hex()}"
    assert store.open(uri).public_key() == handle.public_key()
    with pytest.raises(KeyStoreError, match="pinned"):
        store.open(f"hsm://pkcs11/slot/{slot}")
