"""Generated incident data for examples/forensics.ipynb: a year of signing, then a key theft.

Everything is real: keys in the software key store, proofs in the SQLite store of a fresh
home, and an RFC 3161 timestamp made by ``openssl ts`` acting as a TSA (with a root and TSA
certificate made here), verified by the trusted-time module. Times come from a FrozenClock,
except the timestamp's genTime, which a TSA takes from its own clock -- which is why the
theft is placed just after the present moment.

The story (R = the moment the data is generated)::

    R-400d  key-2024-prod (Ed25519) and pqc-2024-prod (ML-DSA-65) generated; anchors
            pkg:npm/* (both keys) and pkg:maven/* (key-2024-prod)
    R-300d  proof: pkg:npm/left-pad@1.3.0                 signed by key-2024-prod
    R-200d  proof: pkg:npm/lodash@4.17.21                 signed by key-2024-prod + pqc-2024-prod
    R-100d  proof: pkg:maven/org.apache.commons/commons-lang3@3.14.0  by key-2024-prod
    R-60d   key-2025-prod generated and added to pkg:npm/* (a rotation)
    R-30d   proof: pkg:npm/express@4.19.2                 signed by key-2025-prod
    R-10m   proof: pkg:npm/react@18.3.1                   signed by key-2024-prod, timestamped
    T_c     key-2024-prod is stolen (one minute after the timestamp's genTime)
    T_c+1h  the thief signs pkg:npm/event-stream@3.3.6 outside our systems, claiming an old
            build date in the payload; the envelope turns up in a registry
    T_c+2h  discovery: key-2024-prod revoked in ALL anchors for compromise effective T_c;
            emergency key generated and added to ALL anchors
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stellakeys import COMPROMISE, Envelope, FrozenClock, KeyManager, Statement, Subject
from stellakeys.dsse import sign_envelope
from stellakeys.keystores import open_key_store
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.timestamp import RFC3161Verifier

EVIDENCE = "evidence.stella/v1"
COMPROMISED = "key-2024-prod"
DEMO_PASSPHRASE = "forensics-demo-passphrase"  # noqa: S105 - generated demo data only

_TSA_CONFIG = """\
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
serial = {serial}
crypto_device = builtin
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1
digests = sha256
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_alg = sha256
"""


@dataclass
class Incident:
    home: Path
    manager: KeyManager
    clock: FrozenClock
    compromised_key: str
    compromised_at: datetime
    #: artifact PURL -> proof digest, for every proof in the store
    proofs: dict[str, str]
    #: envelopes found outside the store (the thief's)
    found_in_the_wild: list[Envelope] = field(default_factory=list)


def _statement(purl: str, predicate: dict[str, object] | None = None) -> bytes:
    digest = {"sha256": hashlib.sha256(purl.encode()).hexdigest()}
    return Statement((Subject(purl, digest),), EVIDENCE, predicate or {}).to_json()


class _Tsa:
    """A one-certificate-deep TSA: root CA -> TSA certificate (critical timeStamping EKU)."""

    def __init__(self, directory: Path, openssl: str) -> None:
        self.dir = directory
        self.openssl = openssl
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _name("Forensics Demo TSA Root")
        root = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(root_key, hashes.SHA256())
        )
        tsa_key = ec.generate_private_key(ec.SECP256R1())
        tsa = (
            x509.CertificateBuilder()
            .subject_name(_name("Forensics Demo TSA"))
            .issuer_name(root_name)
            .public_key(tsa_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, True, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
            )
            .sign(root_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.root = directory / "root.pem"
        self.root.write_bytes(root.public_bytes(pem))
        (directory / "tsa.pem").write_bytes(tsa.public_bytes(pem))
        (directory / "tsa.key").write_bytes(
            tsa_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (directory / "serial").write_text("01\n")
        self.config = directory / "tsa.cnf"
        self.config.write_text(_TSA_CONFIG.format(serial=directory / "serial"))

    def _run(self, *args: str | Path) -> None:
        subprocess.run([self.openssl, *map(str, args)], check=True, capture_output=True)

    def token_for(self, data: bytes) -> bytes:
        """A DER TimeStampResp over ``data`` (a signature's bytes)."""
        d = self.dir
        (d / "data.bin").write_bytes(data)
        self._run("ts", "-query", "-data", d / "data.bin", "-sha256", "-cert", "-out", d / "q")
        self._run(
            *("ts", "-reply", "-config", self.config, "-queryfile", d / "q"),
            *("-signer", d / "tsa.pem", "-inkey", d / "tsa.key", "-out", d / "r"),
        )
        return (d / "r").read_bytes()


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "StellaKeys Forensics Demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def build_incident(home: Path, *, openssl: str | None = None) -> Incident:
    """Generate the incident in a new home directory (which must not exist yet)."""
    openssl = openssl or shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command line is needed: install Debian package openssl")
    os.environ.setdefault("STELLAKEYS_PASSPHRASE", DEMO_PASSPHRASE)
    home.mkdir(mode=0o700, parents=True)
    tsa = _Tsa(home / "tsa", openssl)
    # The TSA root is the one the verifier trusts (timestamping.tsaRoots, relative to home).
    (home / "signer.yaml").write_text("timestamping:\n  tsaRoots: [tsa/root.pem]\n")
    real_now = datetime.now(UTC).replace(microsecond=0)

    def at(days: float) -> datetime:
        return real_now - timedelta(days=days)

    clock = FrozenClock(at(400))
    km = KeyManager.open(home, clock=clock, actor="release-bot@example.com")
    proofs: dict[str, str] = {}

    def sign(days: float, purl: str, *keys: str) -> None:
        clock.set(at(days))
        proofs[purl] = km.sign(_statement(purl), list(keys))

    km.generate_key(COMPROMISED, "default")
    km.generate_key("pqc-2024-prod", "pqc")
    npm = km.create_anchor("pkg:npm/*", [COMPROMISED, "pqc-2024-prod"], [EVIDENCE], "v2.3.1")
    km.create_anchor("pkg:maven/*", [COMPROMISED], [EVIDENCE], "v2.3.1")
    sign(300, "pkg:npm/left-pad@1.3.0", COMPROMISED)
    sign(200, "pkg:npm/lodash@4.17.21", COMPROMISED, "pqc-2024-prod")
    sign(100, "pkg:maven/org.apache.commons/commons-lang3@3.14.0", COMPROMISED)
    clock.set(at(60))
    km.generate_key("key-2025-prod", "default")
    km.add_key(npm.anchor_id, "key-2025-prod")
    sign(30, "pkg:npm/express@4.19.2", "key-2025-prod")
    sign(10 / 1440, "pkg:npm/react@18.3.1", COMPROMISED)

    # Trusted time for the last proof: a token from the TSA over its signature.
    react = km.get_proof(proofs["pkg:npm/react@18.3.1"])
    verifier = RFC3161Verifier.from_pem_files([tsa.root])
    added = km.timestamp_proof(
        proofs["pkg:npm/react@18.3.1"],
        tokens=[tsa.token_for(react.signatures[0].sig)],
        verifier=verifier,
    )
    gen_time = max(a.token.gen_time for a in added)

    # The theft, one minute after that timestamp, and what the thief signed with the key.
    stolen_at = gen_time.replace(microsecond=0) + timedelta(minutes=1)
    record = km.get_key(COMPROMISED)
    assert record.key_store_uri is not None
    handle = open_key_store(record.key_store_uri, KeyStoreContext(home=home)).open(
        record.key_store_uri
    )
    evil = sign_envelope(
        "application/vnd.in-toto+json",
        _statement("pkg:npm/event-stream@3.3.6", {"builtOn": "2024-03-01T00:00:00Z"}),
        [handle],
        [COMPROMISED],
    )

    # Discovery and the runbook's emergency steps.
    clock.set(stolen_at + timedelta(hours=2))
    km.revoke_key("ALL", COMPROMISED, COMPROMISE, stolen_at)
    km.generate_key("emergency-key-1", "default")
    km.add_key("ALL", "emergency-key-1")
    clock.set(stolen_at + timedelta(hours=3))
    return Incident(
        home=home,
        manager=km,
        clock=clock,
        compromised_key=COMPROMISED,
        compromised_at=stolen_at,
        proofs=proofs,
        found_in_the_wild=[evil],
    )
