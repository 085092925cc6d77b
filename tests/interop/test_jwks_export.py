"""`stellaops anchor export`: an anchor's trusted keys as a JWK Set a JOSE library loads and
verifies our proofs with (joserfc), and as PEM that ``cryptography`` reads."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from stellakeys.crypto import fingerprint_of_spki, load_public_key_der
from stellakeys.dsse import Envelope
from stellakeys_cli.main import cli

NOW = "2030-01-01T00:00:00Z"
SIZES = {"ES256": 32, "ES384": 48}


@pytest.fixture
def run(tmp_path: Path) -> Any:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {
        "STELLAKEYS_HOME": str(home),
        "STELLAKEYS_PASSPHRASE": "jwks-passphrase",
        "STELLAKEYS_ACTOR": "ops@example.com",
        "STELLAKEYS_TEST_NOW": NOW,
    }
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.fixture
def anchor(run: Any, tmp_path: Path) -> tuple[str, dict[str, Envelope]]:
    keys = {"ed": "default", "p256": "fips", "sm2": "sm2", "gone": "default", "leaving": "fips"}
    for key_id, profile in keys.items():
        run("key", "generate", "--profile", profile, "--key-id", key_id)
    created = run(
        "anchor", "create", "--purl-pattern", "pkg:npm/*", "--key-ids", ",".join(keys),
        "--predicate-types", "evidence.stella/v1", "--json",
    )  # fmt: skip
    anchor_id = json.loads(created.stdout)["trustAnchorId"]
    run("anchor", "revoke-key", "--anchor-id", anchor_id, "--key-id", "gone", "--reason",
        "compromise")  # fmt: skip
    run("anchor", "revoke-key", "--anchor-id", anchor_id, "--key-id", "leaving", "--reason",
        "superseded", "--effective-at", "2031-01-01T00:00:00Z")  # fmt: skip
    artifact = tmp_path / "artifact.txt"
    artifact.write_text("hello")
    proofs = {}
    for key_id in ("ed", "p256", "sm2"):
        out = tmp_path / f"{key_id}.json"
        run("sign", "--key-id", key_id, "--input", str(artifact), "--subject",
            "pkg:npm/left-pad@1.3.0", "--predicate-type", "evidence.stella/v1",
            "--output", str(out))  # fmt: skip
        proofs[key_id] = Envelope.from_json(out.read_bytes())
    return anchor_id, proofs


def jose_verifies(keys: KeySet, envelope: Envelope, message: bytes) -> bool:
    """Check the envelope's signature over ``message`` with joserfc alone."""
    signature = envelope.signatures[0]
    jwk = keys.get_by_kid(signature.keyid)
    alg_name = jwk.as_dict()["alg"]
    sig = signature.sig
    if alg_name in SIZES:  # DSSE carries DER ECDSA; JWS wants r || s
        r, s = decode_dss_signature(sig)
        sig = r.to_bytes(SIZES[alg_name], "big") + s.to_bytes(SIZES[alg_name], "big")
    return bool(JWSRegistry.algorithms[alg_name].verify(message, sig, jwk))


def test_jwks_loads_in_joserfc_and_verifies_our_proofs(
    run: Any, anchor: tuple[str, dict[str, Envelope]]
) -> None:
    anchor_id, proofs = anchor
    exported = json.loads(run("anchor", "export", "--anchor-id", anchor_id).stdout)
    keys = KeySet.import_key_set(exported)
    kids = [k.kid for k in keys]
    # Currently trusted: the revoked key is gone, the scheduled revocation is still there.
    assert sorted(kids) == ["ed", "leaving", "p256"]
    by_kid = {k["kid"]: k for k in exported["keys"]}
    assert by_kid["ed"]["kty"] == "OKP" and by_kid["ed"]["crv"] == "Ed25519"
    assert by_kid["p256"]["kty"] == "EC" and by_kid["p256"]["alg"] == "ES256"
    assert by_kid["leaving"]["x-stellakeys"]["revocation"] == "scheduled"
    assert by_kid["leaving"]["x-stellakeys"]["revokedAt"] == "2031-01-01T00:00:00Z"
    assert by_kid["leaving"]["x-stellakeys"]["notAfter"] == "2031-01-01T00:00:00Z"
    assert by_kid["ed"]["x-stellakeys"]["revocation"] == "none"
    assert by_kid["ed"]["x-stellakeys"]["notAfter"] is None

    for key_id in ("ed", "p256"):
        envelope = proofs[key_id]
        assert envelope.signatures[0].keyid == key_id
        assert jose_verifies(keys, envelope, envelope.pae())
        # The JOSE side is really checking: another message does not verify.
        assert not jose_verifies(keys, envelope, envelope.pae() + b" ")

    # SM2 has no JWK form: it is listed with its SPKI in the extension member.
    (sm2,) = exported["x-stellakeys-spki-keys"]
    assert sm2["kid"] == "sm2"
    spki = base64.b64decode(sm2["spki"])
    assert fingerprint_of_spki(spki) == sm2["x-stellakeys"]["fingerprint"]
    sm2_key = load_public_key_der(spki)
    sm2_key.verify(proofs["sm2"].signatures[0].sig, proofs["sm2"].pae())

    # Anchor policy travels with the keys, for verifiers that apply it themselves.
    assert exported["x-stellakeys-anchor"]["purlPattern"] == "pkg:npm/*"
    assert exported["x-stellakeys-anchor"]["allowedPredicateTypes"] == ["evidence.stella/v1"]


def test_jwks_at_a_past_time_and_pem_export(
    run: Any, anchor: tuple[str, dict[str, Envelope]], tmp_path: Path
) -> None:
    anchor_id, _ = anchor
    before = json.loads(
        run(
            "anchor", "export", "--anchor-id", anchor_id, "--at-time", "2029-12-31T00:00:00Z"
        ).stdout
    )
    assert before["keys"] == [] and before["x-stellakeys-spki-keys"] == []

    out = tmp_path / "keys.pem"
    run("anchor", "export", "--anchor-id", anchor_id, "--format", "pem", "--output", str(out))
    text = out.read_text()
    blocks = re.findall(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----\n", text, re.S)
    assert len(blocks) == 4  # ed, p256, sm2, leaving (not the revoked one)
    assert "# keyId: gone" not in text and "# revocation: scheduled" in text
    ids = re.findall(r"^# keyId: (.+)$", text, re.M)
    assert sorted(ids) == ["ed", "leaving", "p256", "sm2"]
    for block in blocks[:1]:
        serialization.load_pem_public_key(block.encode())  # a peer parser reads it


def test_export_of_an_unknown_anchor_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "STELLAKEYS_HOME": str(tmp_path), "STELLAKEYS_TEST_NOW": NOW}
    missing = "00000000-0000-4000-8000-000000000000"
    proc = subprocess.run(
        [sys.executable, "-m", "stellakeys_cli", "anchor", "export", "--anchor-id", missing],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert f"error: no trust anchor {missing}" in proc.stderr
