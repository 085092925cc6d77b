"""Issue 17 item 2: one parser of key store URIs, tested with the RFC 7512 examples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stellakeys.errors import KeyStoreError
from stellakeys.keystores.uris import KmsUri, Pkcs11Uri, canonical_uri, check_key_store_uri

ROOT = Path(__file__).resolve().parents[2]

# RFC 7512 section 3.3, verbatim (pin-value examples are refused on purpose, below).
RFC7512_EXAMPLES = [
    "pkcs11:",
    "pkcs11:object=my-pubkey;type=public",
    "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
    "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;"
    "manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;"
    "type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial="
    "?pin-source=file:/etc/token_pin",
    "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
    "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
    "pkcs11:slot-description=Sun%20Metaslot",
    "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;"
    "library-description=Soft%20Token%20Library;library-version=1.23",
    "pkcs11:token=My%20token%25%20created%20by%20Joe;"
    "library-version=3;id=%01%02%03%Ba%dd%Ef%fe%Ba%dd%Ef%fe;"
    "model=PKCS%2311%20test%20token?module-name=mypkcs11",
    "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
    "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;"
    "object=my-certificate;type=cert",
    "pkcs11:token=my-token;object=my-certificate;type=cert;"
    "vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
]
RFC7512_PIN_VALUE = [
    "pkcs11:token=Software%20PKCS%2311%20softtoken;"
    "manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
]


@pytest.mark.parametrize("uri", RFC7512_EXAMPLES)
def test_rfc7512_examples_parse(uri: str) -> None:
    assert check_key_store_uri(uri) == uri
    Pkcs11Uri.parse(uri)


def test_rfc7512_decoded_values() -> None:
    p = Pkcs11Uri.parse(RFC7512_EXAMPLES[3])
    assert p.token == "The Software PKCS#11 Softtoken"
    assert p.manufacturer == "Snake Oil, Inc."
    assert p.model == "1.0"
    assert p.object == "my-certificate"
    assert p.type == "cert"
    assert p.id == bytes.fromhex("69953e5cf4bdec91")
    assert p.serial == ""
    assert p.pin_source == "/etc/token_pin"
    p = Pkcs11Uri.parse(RFC7512_EXAMPLES[8])
    assert p.token == "My token% created by Joe"
    assert p.id == bytes.fromhex("010203baddeffebaddeffe")
    assert p.module_name == "mypkcs11"
    assert ("library-version", "3") in p.other
    assert Pkcs11Uri.parse(RFC7512_EXAMPLES[9]).token == "A name with a substring %;"
    assert Pkcs11Uri.parse(RFC7512_EXAMPLES[10]).token == "Name with a small A with acute: á"
    p = Pkcs11Uri.parse(RFC7512_EXAMPLES[11])
    assert ("vendor-aaa", "value-a") in p.other and ("vendor-bbb", "value-b") in p.other
    assert Pkcs11Uri.parse(RFC7512_EXAMPLES[5]).module_path == "/mnt/libmypkcs11.so.1"
    assert Pkcs11Uri.parse("pkcs11:slot-id=3").slot_id == 3


@pytest.mark.parametrize("uri", RFC7512_PIN_VALUE)
def test_pin_value_is_refused(uri: str) -> None:
    with pytest.raises(KeyStoreError, match="refusing pin-value"):
        check_key_store_uri(uri)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:tokn=T", "did you mean token?"),
        ("pkcs11:token=T;token=U", "twice"),
        ("pkcs11:token=T;type=secret", "expected one of"),
        ("pkcs11:slot-id=zero", "bad slot"),
        ("pkcs11:token=T;module-path=/x.so", "belongs in the query"),
        ("pkcs11:token=T?modul-path=/x.so", "did you mean module-path?"),
        ("hsm://pkcs11/slto/0", "unknown segment"),
        # Which duplicate wins is invisible to whoever reads the config: refused everywhere.
        ("pkcs11:token=T?module-path=/a.so&module-path=/b.so", "twice"),
        ("pkcs11:token=T?pin-source=/a&PIN-SOURCE=/b", "twice"),
        ("pkcs11:x-a=1?x-a=2", "twice"),
        ("hsm://pkcs11/token/T/token/U", "twice"),
        # RFC 3986 pct-encoded is '%' and two hex digits; decoding is strict UTF-8.
        ("pkcs11:token=50%", "not followed by two hex digits"),
        ("pkcs11:id=%ZZ", "not followed by two hex digits"),
        ("pkcs11:token=T?module-path=/x%2", "not followed by two hex digits"),
        ("pkcs11:token=T?module-path=/x%FF.so", "not UTF-8"),
        ("hsm://pkcs11/token/%C3", "not UTF-8"),
    ],
)
def test_malformed_pkcs11_uris_say_what_is_wrong(uri: str, message: str) -> None:
    with pytest.raises(KeyStoreError, match=message):
        check_key_store_uri(uri)


def test_runbook_hsm_forms() -> None:
    assert Pkcs11Uri.parse("hsm://pkcs11/slot/0").slot_id == 0
    assert Pkcs11Uri.parse("hsm://pkcs11/token/T/id/0a0b").id == b"\x0a\x0b"
    assert check_key_store_uri("hsm://pkcs11/slot/0") == "hsm://pkcs11/slot/0"


KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALIAS_ARN = "arn:aws:kms:us-east-2:111122223333:alias/stellaops-default"


def test_kms_arns_and_alias_names() -> None:
    assert canonical_uri(KEY_ARN) == f"kms://aws/key/{KEY_ARN}"
    parsed = KmsUri.parse(KEY_ARN)
    assert parsed.key == KEY_ARN and parsed.region == "eu-west-1"
    assert KmsUri.parse(ALIAS_ARN).region == "us-east-2"
    assert KmsUri.parse("alias/stellaops-default").key == "alias/stellaops-default"
    assert KmsUri.parse("alias/stellaops-default").is_alias
    assert KmsUri.parse("kms://aws/key/stellaops-default").key == "alias/stellaops-default"
    assert check_key_store_uri("alias/x") == "kms://aws/key/alias/x"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("arn:aws:kms:eu-west-1:1111:key/abc", "not a KMS key ARN"),
        (f"kms://aws/key/{KEY_ARN}?region=us-east-1", "contradicts"),
        ("kms://aws/key/x?regoin=eu-west-1", "unknown parameter"),
        ("alias/bad alias", "invalid KMS alias"),
        ("default", "not a key store URI"),
        ("", "non-empty"),
    ],
)
def test_malformed_kms_and_other_uris(uri: str, message: str) -> None:
    with pytest.raises(KeyStoreError, match=message):
        check_key_store_uri(uri)


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STELLAKEYS_")}
    env.update(STELLAKEYS_HOME=str(home), PYTHONPATH=str(ROOT), STELLAKEYS_PASSPHRASE="pw")
    return subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,
        timeout=120,
    )


@pytest.mark.parametrize(
    "key_store",
    [
        "pkcs11:token=T",
        "pkcs11:token=T;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/p",
        "hsm://pkcs11/slot/0",
        KEY_ARN,
        "alias/stellaops-default",
        "kms://aws/key/stellaops-default",
    ],
)
def test_signer_yaml_accepts_every_standard_form(tmp_path: Path, key_store: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "signer.yaml").write_text(
        f'signer:\n  profiles:\n    release: {{algorithm: ed25519, keyStore: "{key_store}"}}\n'
    )
    res = _run(home, "key", "list")  # loads the profiles; opens no key store
    assert res.returncode == 0, res.stderr


def test_signer_yaml_refuses_a_bad_pkcs11_uri(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "signer.yaml").write_text(
        'signer:\n  profiles:\n    release: {algorithm: ed25519, keyStore: "pkcs11:tokn=T"}\n'
    )
    res = _run(home, "key", "list")
    assert res.returncode == 1
    assert "signer.profiles.release.keyStore: unknown attribute 'tokn'" in res.stderr
    assert "did you mean token?" in res.stderr
