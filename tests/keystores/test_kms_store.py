"""The AWS KMS key store against moto in server mode (no real AWS is reachable here).

moto 5.2 implements CreateKey/Sign/GetPublicKey for ECC_NIST_P256 and ECC_NIST_P384 but not
ECC_NIST_EDWARDS25519, and it ignores MessageType (it would sign a DIGEST as if it were the
message). Those two request shapes are checked against the botocore KMS service model with
botocore's Stubber instead: that validates our parameters, not KMS's behaviour.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.credentials
import botocore.session
import pytest
from botocore.stub import Stubber
from keystore_conformance import KeyStoreConformance, StoreUnderTest, unique_key_id

from stellakeys.crypto import get_algorithm
from stellakeys.errors import KeyStoreError
from stellakeys.keystores import KeyStoreContext, open_key_store
from stellakeys.keystores.kms import KmsKeyHandle, KmsKeyStore, KmsUri

KMS_ALGORITHMS_IN_MOTO = ("ecdsa-p256-sha256", "ecdsa-p384-sha384")


def _no_credentials_session() -> boto3.session.Session:
    core = botocore.session.Session()
    core.register_component("credential_provider", botocore.credentials.CredentialResolver([]))
    return boto3.session.Session(botocore_session=core)


class TestKmsConformance(KeyStoreConformance):
    @pytest.fixture(params=KMS_ALGORITHMS_IN_MOTO)
    def algorithm_id(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def sut(self, kms_env: str, tmp_path: Path) -> Iterator[StoreUnderTest]:
        def wrong() -> KmsKeyStore:
            return KmsKeyStore(
                KmsUri.parse("kms://aws/key/alias/conformance"),
                endpoint_url=kms_env,
                session_factory=_no_credentials_session,
            )

        def missing(uri: str) -> str:
            return "kms://aws/key/00000000-0000-4000-8000-000000000000?region=eu-west-1"

        sut = StoreUnderTest(
            uri="kms://aws/key/alias/conformance",
            context=KeyStoreContext(home=tmp_path),
            open_with_wrong_secret=wrong,
            missing_uri=missing,
            # The store supports ed25519 on real KMS; moto cannot generate it (see above).
            supported=(*KMS_ALGORITHMS_IN_MOTO, "ed25519"),
            secrets=("testing",),
        )
        yield sut
        sut.close_all()


def test_runbook_alias_is_resolved_and_pinned_to_the_key_id(kms_env: str, tmp_path: Path) -> None:
    context = KeyStoreContext(home=tmp_path)
    store = open_key_store("kms://aws/key/stellaops-default", context)
    first = store.generate(get_algorithm("ecdsa-p256-sha256"), unique_key_id("rot"))
    second = store.generate(get_algorithm("ecdsa-p256-sha256"), unique_key_id("rot"))
    assert first.uri != second.uri
    for handle in (first, second):
        assert KmsUri.parse(handle.uri).is_pinned
        assert handle.uri.endswith("?region=eu-west-1")
    kms = boto3.client("kms", endpoint_url=kms_env)
    # The profile alias follows the newest key ...
    current = kms.describe_key(KeyId="alias/stellaops-default")["KeyMetadata"]["KeyId"]
    assert second.uri.startswith(f"kms://aws/key/{current}?")
    # ... while the first key's pinned URI still opens the first key.
    again = open_key_store(first.uri, context).open(first.uri)
    assert again.public_key() == first.public_key()
    assert again.public_key() != second.public_key()


def test_public_key_is_kms_spki_and_signatures_verify(kms_env: str, tmp_path: Path) -> None:
    store = open_key_store("kms://aws", KeyStoreContext(home=tmp_path))
    handle = store.generate(get_algorithm("ecdsa-p384-sha384"), unique_key_id("pub"))
    assert isinstance(handle, KmsKeyHandle)
    kms = boto3.client("kms", endpoint_url=kms_env)
    der = kms.get_public_key(KeyId=handle.key_arn)["PublicKey"]
    assert handle.public_key().spki_der == der
    handle.public_key().verify(handle.sign(b"m" * 4096), b"m" * 4096)


def test_alias_uris_are_not_pinned(kms_env: str, tmp_path: Path) -> None:
    store = open_key_store("kms://aws/key/alias/conformance", KeyStoreContext(home=tmp_path))
    with pytest.raises(KeyStoreError, match="aliases move"):
        store.open("kms://aws/key/alias/conformance")


def test_store_naming_a_fixed_key_cannot_generate(kms_env: str, tmp_path: Path) -> None:
    uri = "kms://aws/key/0b8e2c4c-1111-4222-8333-123456789abc"
    with pytest.raises(KeyStoreError, match="needs an alias"):
        open_key_store(uri, KeyStoreContext(home=tmp_path)).generate(
            get_algorithm("ecdsa-p256-sha256"), "k"
        )


def test_no_region_is_a_clear_error(kms_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    store = KmsKeyStore(KmsUri.parse("kms://aws"), endpoint_url=kms_env)
    with pytest.raises(KeyStoreError, match="region"):
        store.generate(get_algorithm("ecdsa-p256-sha256"), "k")


# --- request shapes moto cannot check, validated against botocore's KMS model -------------------


def _stubbed(region: str = "eu-west-1") -> tuple[KmsKeyStore, Stubber]:
    client = boto3.client(
        "kms", region_name=region, aws_access_key_id="x", aws_secret_access_key="y"
    )
    store = KmsKeyStore(KmsUri.parse("kms://aws/key/alias/p"))
    store._client = client
    return store, Stubber(client)


def test_ed25519_request_shapes() -> None:
    ed = get_algorithm("ed25519")
    local = ed.generate()
    store, stub = _stubbed()
    key_uuid = "1234abcd-12ab-34cd-56ef-1234567890ab"
    arn = f"arn:aws:kms:eu-west-1:111122223333:key/{key_uuid}"
    ok: dict[str, Any] = {"KeyMetadata": {"KeyId": key_uuid, "Arn": arn}}
    not_found = {"service_error_code": "NotFoundException", "service_message": "nope"}
    stub.add_client_error("describe_key", **not_found)
    stub.add_response(
        "create_key",
        ok,
        {
            "KeySpec": "ECC_NIST_EDWARDS25519",
            "KeyUsage": "SIGN_VERIFY",
            "Description": "stellakeys key k1",
            "Tags": [{"TagKey": "stellakeys:key-id", "TagValue": "k1"}],
        },
    )
    stub.add_response(
        "create_alias", {}, {"AliasName": "alias/stellakeys/k1", "TargetKeyId": key_uuid}
    )
    stub.add_response(
        "get_public_key", {"PublicKey": local.public_key().spki_der}, {"KeyId": key_uuid}
    )
    stub.add_response("update_alias", {}, {"AliasName": "alias/p", "TargetKeyId": key_uuid})
    message = b"short message"
    stub.add_response(
        "sign",
        {"Signature": local.sign(message)},
        {
            "KeyId": arn,
            "Message": message,
            "MessageType": "RAW",
            "SigningAlgorithm": "ED25519_SHA_512",
        },
    )
    with stub:
        handle = store.generate(ed, "k1")
        assert handle.uri == f"kms://aws/key/{key_uuid}?region=eu-west-1"
        handle.public_key().verify(handle.sign(message), message)
        with pytest.raises(KeyStoreError, match="up to 4096 bytes"):
            handle.sign(b"x" * 4097)
    stub.assert_no_pending_responses()


def test_long_ecdsa_messages_are_signed_as_a_digest() -> None:
    p256 = get_algorithm("ecdsa-p256-sha256")
    local = p256.generate()
    store, stub = _stubbed()
    arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    handle = KmsKeyHandle(store, "kms://aws/key/x", arn, p256, local.public_key())
    message = b"y" * 10_000
    stub.add_response(
        "sign",
        {"Signature": local.sign(message)},
        {
            "KeyId": arn,
            "Message": hashlib.sha256(message).digest(),
            "MessageType": "DIGEST",
            "SigningAlgorithm": "ECDSA_SHA_256",
        },
    )
    with stub:
        handle.public_key().verify(handle.sign(message), message)
    stub.assert_no_pending_responses()
