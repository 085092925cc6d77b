"""``stellaops key generate --profile P`` puts the key in the profile's store, whatever its kind.

The runbook's profiles: ``fips`` on a PKCS#11 HSM (SoftHSM2 here), ``default`` on AWS KMS
(moto here), ``pqc`` on software. Each key then signs through the CLI and the proof verifies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from softhsm import SoftHsm

from stellakeys_cli.main import cli

SIGNER_YAML = """\
signer:
  profiles:
    default:
      algorithm: "SHA256-ECDSA-P256"
      keyStore: "kms://aws/key/stellaops-default"
    fips:
      algorithm: "SHA256-ECDSA-P256"
      keyStore: "hsm://pkcs11/slot/{slot}"
    pqc:
      algorithm: "ML-DSA-65"
      keyStore: "software://pqc"
"""


@pytest.fixture
def home(
    tmp_path: Path,
    softhsm: SoftHsm,
    pkcs11_pin: str,
    kms_env: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    (path / "signer.yaml").write_text(SIGNER_YAML.format(slot=softhsm["T"].slot_id))
    monkeypatch.setenv("STELLAKEYS_HOME", str(path))
    monkeypatch.setenv("STELLAKEYS_PASSPHRASE", "cli-generate-passphrase")
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # stdout only: the in-process moto server logs its requests to stderr.
    return result.stdout


@pytest.mark.parametrize(
    ("profile", "store_prefix", "algorithm"),
    [
        ("fips", "pkcs11:", "ecdsa-p256-sha256"),
        ("default", "kms://aws/key/", "ecdsa-p256-sha256"),
        ("pqc", "software://pqc/", "ml-dsa-65"),
    ],
)
def test_generate_goes_to_the_profiles_store(
    home: Path,
    profile: str,
    store_prefix: str,
    algorithm: str,
    openssl: Any,  # tests/conftest.py's OpenSSL runner
) -> None:
    key_id = f"{profile}-key"
    record = json.loads(run("key", "generate", "--profile", profile, "--key-id", key_id, "--json"))
    assert record["keyStore"].startswith(store_prefix)
    assert record["algorithm"] == algorithm and record["profile"] == profile
    if profile == "default":
        # The profile names an alias; the record pins the key id it resolved to.
        assert "stellaops-default" not in record["keyStore"]
    artifact = home / "artifact"
    artifact.write_bytes(b"payload for " + key_id.encode())
    proof = run("sign", "--key-id", key_id, "--input", str(artifact)).strip()
    verified = json.loads(run("verify", "--proof-bundle", proof, "--json"))
    assert verified["ok"] and verified["keyId"] == key_id
    if algorithm.startswith("ecdsa"):
        # The signature made inside the HSM or KMS verifies with OpenSSL too.
        envelope = json.loads(run("sign", "--key-id", key_id, "--input", str(artifact), "--json"))
        from stellakeys.dsse import Envelope, b64decode

        env = Envelope.from_dict(envelope["envelope"])
        (home / "pub.pem").write_text(record["publicKey"])
        (home / "pae").write_bytes(env.pae())
        (home / "sig").write_bytes(b64decode(envelope["envelope"]["signatures"][0]["sig"]))
        check = openssl.run(
            "dgst",
            "-sha256",
            "-verify",
            home / "pub.pem",
            "-signature",
            home / "sig",
            home / "pae",
        )
        assert check.returncode == 0, check.stderr
