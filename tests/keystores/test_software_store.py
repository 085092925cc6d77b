"""The software key store: conformance, encryption at rest, permissions, secrets."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from keystore_conformance import (
    TEST_PASSPHRASE as PASSPHRASE,
)
from keystore_conformance import KeyStoreConformance, StoreUnderTest, unique_key_id

from stellakeys.crypto import get_algorithm
from stellakeys.errors import KeyIdentityError, KeyStoreError
from stellakeys.keystores import KeyStoreContext, SecretSource
from stellakeys.keystores.software import SCRYPT_N, SoftwareKeyStore

# Every registered algorithm: the software store is where SM2 and GOST keys live (runbook:
# "Local HSM" profiles run on the software store until a token supports them).
SOFTWARE_ALGORITHMS = (
    "ed25519",
    "ecdsa-p256-sha256",
    "ecdsa-p384-sha384",
    "ml-dsa-65",
    "sm2-sm3",
    "gost-r-34.10-2012-256",
    "gost-r-34.10-2012-512",
)


class TestSoftwareConformance(KeyStoreConformance):
    @pytest.fixture(params=SOFTWARE_ALGORITHMS)
    def algorithm_id(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def sut(
        self,
        software_context: KeyStoreContext,
        passphrase_env: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Iterator[StoreUnderTest]:
        def wrong() -> SoftwareKeyStore:
            source = SecretSource(
                "passphrase", "X_WRONG_PASSPHRASE", environ={"X_WRONG_PASSPHRASE": "wrong!"}
            )
            return SoftwareKeyStore(software_context.home / "keys" / "conformance", source)

        def missing(uri: str) -> str:
            base, _, fingerprint = uri.partition("#")
            return base.rsplit("/", 1)[0] + "/no-such-key#" + fingerprint

        sut = StoreUnderTest(
            uri="software://conformance",
            context=software_context,
            open_with_wrong_secret=wrong,
            missing_uri=missing,
            supported=SOFTWARE_ALGORITHMS,
            secrets=(PASSPHRASE, "wrong!"),
        )
        yield sut
        sut.close_all()


# --- encryption at rest, layout and pinning ---------------------------------------------------


@pytest.fixture
def store(software_context: KeyStoreContext, passphrase_env: str) -> Iterator[SoftwareKeyStore]:
    ks = SoftwareKeyStore.from_uri("software://default", software_context)
    yield ks
    ks.close()


def test_files_are_private_and_complete(store: SoftwareKeyStore) -> None:
    handle = store.generate(get_algorithm("ed25519"), unique_key_id("files"))
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    names = os.listdir(store.directory)
    assert not [n for n in names if n.startswith(".tmp-")], names
    for name in names:
        assert stat.S_IMODE(os.stat(store.directory / name).st_mode) == 0o600, name
    content = (store.directory / f"{handle.key_id}.pem").read_bytes()
    assert content.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert b"-----BEGIN PRIVATE KEY-----" not in content
    assert handle.public_key().to_pem().encode() in content
    assert handle.uri == f"software://default/{handle.key_id}#{handle.public_key().fingerprint}"


def test_store_json_records_scrypt_and_pkcs8_opens_in_openssl(
    store: SoftwareKeyStore, openssl: object
) -> None:
    handle = store.generate(get_algorithm("ecdsa-p256-sha256"), unique_key_id("openssl"))
    meta = json.loads((store.directory / "store.json").read_text())
    assert meta["kdf"]["name"] == "scrypt"
    assert meta["kdf"]["n"] == SCRYPT_N == 2**17
    assert PASSPHRASE not in json.dumps(meta)
    # The file is plain PKCS#8: OpenSSL opens it with the scrypt-derived passphrase (the
    # documented recovery path), and not with the user's passphrase itself.
    derived = store._derived
    assert derived is not None
    key_file = store.directory / f"{handle.key_id}.pem"
    ok = openssl.run(  # type: ignore[attr-defined]
        "pkey", "-in", key_file, "-passin", "pass:" + derived.decode(), "-pubout"
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode() == handle.public_key().to_pem()
    bad = openssl.run(  # type: ignore[attr-defined]
        "pkey", "-in", key_file, "-passin", "pass:" + PASSPHRASE, "-pubout"
    )
    assert bad.returncode != 0


def test_a_replaced_key_file_does_not_take_over_the_pinned_uri(
    store: SoftwareKeyStore, software_context: KeyStoreContext
) -> None:
    key_id = unique_key_id("swap")
    original = store.generate(get_algorithm("ed25519"), key_id)
    (store.directory / f"{key_id}.pem").unlink()
    impostor = store.generate(get_algorithm("ed25519"), key_id)
    assert impostor.uri != original.uri
    fresh = SoftwareKeyStore.from_uri("software://default", software_context)
    with pytest.raises(KeyIdentityError) as refused:  # a KeyStoreError, naming both keys
        fresh.open(original.uri)
    assert original.public_key().fingerprint in str(refused.value)
    assert impostor.public_key().fingerprint in str(refused.value)


def test_unpinned_uri_is_refused(store: SoftwareKeyStore) -> None:
    handle = store.generate(get_algorithm("ed25519"), unique_key_id("unpinned"))
    with pytest.raises(KeyStoreError, match="not a pinned software key URI"):
        store.open(handle.uri.split("#")[0])


@pytest.mark.parametrize("bad", ["../etc", ".hidden", "a/b", "", "x" * 200, "k.tmp", "sp ace"])
def test_key_ids_that_are_not_safe_file_names_are_refused(
    store: SoftwareKeyStore, bad: str
) -> None:
    with pytest.raises(KeyStoreError, match="invalid key id"):
        store.generate(get_algorithm("ed25519"), bad)


def test_decrypted_key_is_cached_for_the_process(
    store: SoftwareKeyStore, software_context: KeyStoreContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = store.generate(get_algorithm("ed25519"), unique_key_id("cache")).uri
    handle = SoftwareKeyStore.from_uri("software://default", software_context).open(uri)
    monkeypatch.delenv("STELLAKEYS_PASSPHRASE")  # the passphrase is no longer needed
    start = time.perf_counter()
    for i in range(200):
        handle.sign(b"%d" % i)
    # 200 signatures in well under one scrypt: nothing is re-derived per signature.
    assert time.perf_counter() - start < 0.3


# --- permissions -------------------------------------------------------------------------------


def test_group_readable_store_directory_is_refused(tmp_path: Path, passphrase_env: str) -> None:
    context = KeyStoreContext(home=tmp_path)
    ks = SoftwareKeyStore.from_uri("software://loose", context)
    ks.generate(get_algorithm("ed25519"), "k1")
    os.chmod(ks.directory, 0o750)
    with pytest.raises(KeyStoreError, match="chmod 700"):
        SoftwareKeyStore.from_uri("software://loose", context)
    os.chmod(ks.directory, 0o700)
    os.chmod(ks.directory / "k1.pem", 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        SoftwareKeyStore.from_uri("software://loose", context)


def test_key_file_made_readable_after_open_is_refused_on_read(
    tmp_path: Path, passphrase_env: str
) -> None:
    context = KeyStoreContext(home=tmp_path)
    ks = SoftwareKeyStore.from_uri("software://late", context)
    uri = ks.generate(get_algorithm("ed25519"), "k1").uri
    reader = SoftwareKeyStore.from_uri("software://late", context)
    os.chmod(ks.directory / "k1.pem", 0o640)
    with pytest.raises(KeyStoreError, match="group or others"):
        reader.open(uri)


def test_symlinked_key_file_is_refused(tmp_path: Path, passphrase_env: str) -> None:
    context = KeyStoreContext(home=tmp_path)
    ks = SoftwareKeyStore.from_uri("software://links", context)
    uri = ks.generate(get_algorithm("ed25519"), "real").uri
    os.symlink(ks.directory / "real.pem", ks.directory / "alias.pem")
    with pytest.raises(KeyStoreError, match="symlink"):
        SoftwareKeyStore.from_uri("software://links", context)
    os.unlink(ks.directory / "alias.pem")
    assert ks.open(uri).key_id == "real"


# --- secrets -----------------------------------------------------------------------------------


def test_wrong_passphrase_is_named_and_not_echoed(
    store: SoftwareKeyStore, software_context: KeyStoreContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = store.generate(get_algorithm("ed25519"), unique_key_id("wrong")).uri
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "hunter2-not-it")
    with pytest.raises(KeyStoreError) as info:
        SoftwareKeyStore.from_uri("software://default", software_context).open(uri)
    assert "wrong passphrase" in str(info.value)
    assert "$STELLAKEYS_PASSPHRASE" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_wrong_passphrase_cannot_add_keys_to_an_existing_store(
    store: SoftwareKeyStore, software_context: KeyStoreContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.generate(get_algorithm("ed25519"), unique_key_id("first"))
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "another passphrase")
    other = SoftwareKeyStore.from_uri("software://default", software_context)
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        other.generate(get_algorithm("ed25519"), unique_key_id("second"))


def test_passphrase_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text("from a file\n")
    os.chmod(secret_file, 0o600)
    monkeypatch.delenv("STELLAKEYS_PASSPHRASE", raising=False)
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE_FILE", str(secret_file))
    context = KeyStoreContext(home=tmp_path / "home")
    uri = (
        SoftwareKeyStore.from_uri("software://f", context)
        .generate(get_algorithm("ed25519"), "k")
        .uri
    )
    # The trailing newline was not part of the passphrase:
    monkeypatch.delenv("STELLAKEYS_PASSPHRASE_FILE")
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "from a file")
    assert SoftwareKeyStore.from_uri("software://f", context).open(uri).key_id == "k"


def test_group_readable_passphrase_file_is_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text("s3cret-in-file")
    os.chmod(secret_file, 0o640)
    source = SecretSource("passphrase", "P", environ={"P_FILE": str(secret_file)})
    with pytest.raises(KeyStoreError, match="chmod 600") as info:
        source.read()
    assert "s3cret" not in str(info.value)


def test_both_env_and_file_is_ambiguous(tmp_path: Path) -> None:
    source = SecretSource("PIN", "PIN", environ={"PIN": "1", "PIN_FILE": str(tmp_path)})
    with pytest.raises(KeyStoreError, match="set only one"):
        source.read()


def test_no_secret_source_says_how_to_provide_one(tmp_path: Path) -> None:
    ks = SoftwareKeyStore(
        tmp_path / "keys" / "none",
        SecretSource(
            "passphrase for software key store 'none'", "STELLAKEYS_PASSPHRASE", environ={}
        ),
    )
    with pytest.raises(KeyStoreError) as info:
        ks.generate(get_algorithm("ed25519"), "k")
    message = str(info.value)
    assert "$STELLAKEYS_PASSPHRASE" in message and "$STELLAKEYS_PASSPHRASE_FILE" in message


def test_prompt_confirms_a_new_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STELLAKEYS_PASSPHRASE", raising=False)
    monkeypatch.delenv("STELLAKEYS_PASSPHRASE_FILE", raising=False)
    answers = iter(["typed once", "typed twice"])
    prompts: list[str] = []

    def prompt(text: str) -> str:
        prompts.append(text)
        return next(answers)

    context = KeyStoreContext(home=tmp_path, prompt=prompt)
    with pytest.raises(KeyStoreError, match="differ"):
        SoftwareKeyStore.from_uri("software://p", context).generate(get_algorithm("ed25519"), "k")
    assert prompts == [
        "Passphrase for software key store 'p': ",
        "Repeat the passphrase for software key store 'p': ",
    ]
    answers = iter(["same", "same", "same", "left over"])
    uri = (
        SoftwareKeyStore.from_uri("software://p", context)
        .generate(get_algorithm("ed25519"), "k")
        .uri
    )
    # Opening an existing store asks once.
    assert SoftwareKeyStore.from_uri("software://p", context).open(uri).key_id == "k"
    assert next(answers) == "left over"


def test_secret_repr_and_pickle() -> None:
    import pickle

    secret = SecretSource("PIN", "PIN", environ={"PIN": "9876"}).read()
    assert "9876" not in repr(secret) and "9876" not in str(secret)
    assert secret.reveal() == "9876"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
