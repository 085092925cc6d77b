"""Which certificate may vouch for a timestamp (RFC 3161 2.3 and 2.4.1), held to OpenSSL.

* The TSA certificate's extended key usage is id-kp-timeStamping **alone** and critical, and
  a key usage, when present, is digitalSignature and/or nonRepudiation only. Each crafted
  certificate is judged by ``openssl verify -purpose timestampsign`` (OpenSSL's
  ``check_purpose_timestamp_sign``) and by us, and the verdicts must agree.
* The certificate is the one the TSA *signed for*: the SignerInfo's issuer and serial, by
  which it is found, are outside the signature; the ESS signing-certificate attribute inside
  it is what binds it. A token whose embedded certificate and SignerInfo were swapped for a
  twin (same key, other serial and validity) is refused by ``openssl ts -verify`` and by us.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tsa_support import TSA_CONFIG

from stellakeys.timestamp import (
    RFC3161Verifier,
    _certificate_problem,
    _children,
    _tlv,
    parse_token,
)
from stellakeys.timestamp_token import signing_certificate_hashes

# Fixed instants: the purpose table never reads the clock.
NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2027, 1, 1, tzinfo=UTC)
AT = datetime(2025, 6, 1, tzinfo=UTC)
PEM = serialization.Encoding.PEM
TS, CODE = ExtendedKeyUsageOID.TIME_STAMPING, ExtendedKeyUsageOID.CODE_SIGNING


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(**on: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def _root(
    key: ed25519.Ed25519PrivateKey, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name("Rules Test TSA Root"))
        .issuer_name(_name("Rules Test TSA Root"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, None)  # Ed25519: every signature 64 bytes, so twins have equal lengths
    )


def _leaf(
    root_key: ed25519.Ed25519PrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    eku: list[x509.ObjectIdentifier] | None = None,
    eku_critical: bool = True,
    usage: x509.KeyUsage | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("Rules Test TSA"))
        .issuer_name(_name("Rules Test TSA Root"))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=eku_critical)
    return builder.sign(root_key, None)


PURPOSE_CASES = {
    "timeStamping alone, critical, digitalSignature": dict(
        eku=[TS], usage=_usage(digital_signature=True)
    ),
    "timeStamping alone, no key usage": dict(eku=[TS]),
    "nonRepudiation alone": dict(eku=[TS], usage=_usage(content_commitment=True)),
    "both signature usages": dict(
        eku=[TS], usage=_usage(digital_signature=True, content_commitment=True)
    ),
    "EKU not critical": dict(eku=[TS], eku_critical=False),
    "timeStamping and codeSigning": dict(eku=[TS, CODE]),
    "timeStamping and anyExtendedKeyUsage": dict(
        eku=[TS, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]
    ),
    "codeSigning only": dict(eku=[CODE]),
    "no EKU": dict(eku=None, usage=_usage(digital_signature=True)),
    "digitalSignature and keyEncipherment": dict(
        eku=[TS], usage=_usage(digital_signature=True, key_encipherment=True)
    ),
    "keyCertSign only": dict(eku=[TS], usage=_usage(key_cert_sign=True)),
}


@pytest.mark.parametrize("case", sorted(PURPOSE_CASES))
def test_tsa_certificate_purpose_agrees_with_openssl(openssl, tmp_path: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    root_key = ed25519.Ed25519PrivateKey.generate()
    root = _root(root_key, NOT_BEFORE, NOT_AFTER)
    cert = _leaf(
        root_key,
        ec.generate_private_key(ec.SECP256R1()),
        serial=2,
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        **PURPOSE_CASES[case],  # type: ignore[arg-type]
    )
    (tmp_path / "root.pem").write_bytes(root.public_bytes(PEM))
    (tmp_path / "leaf.pem").write_bytes(cert.public_bytes(PEM))
    theirs = openssl.run(
        "verify", "-purpose", "timestampsign", "-attime", str(int(AT.timestamp())),
        "-CAfile", tmp_path / "root.pem", tmp_path / "leaf.pem",
    )  # fmt: skip
    ours = _certificate_problem(cert, AT)
    assert (ours is None) == (theirs.returncode == 0), (ours, theirs.stdout, theirs.stderr)


# --- a substituted certificate -----------------------------------------------------------------


class _TwinTsa:
    """A TSA whose key has two certificates of equal DER length: ``signer`` (what
    ``openssl ts -reply`` signs with, and names in the signed ESS attribute) and ``twin``."""

    def __init__(  # type: ignore[no-untyped-def]
        self, directory: Path, openssl, signer_expired: bool, ess_alg: str = "sha256"
    ) -> None:
        self.dir = directory
        self.openssl = openssl
        # openssl ts -reply stamps the real time: validity is relative to that same clock.
        now = datetime.now(UTC)
        day = timedelta(days=1)
        root_key = ed25519.Ed25519PrivateKey.generate()
        self.root = _root(root_key, now - 30 * day, now + 30 * day)
        key = ec.generate_private_key(ec.SECP256R1())
        self.key = key
        expired = (now - 20 * day, now - 10 * day)
        signed_window = expired if signer_expired else (now - day, now + day)
        usage = _usage(digital_signature=True)
        self.signer = _leaf(
            root_key, key, serial=0x1111_1111_1111_1111, usage=usage, eku=[TS],
            not_before=signed_window[0], not_after=signed_window[1],
        )  # fmt: skip
        self.twin = _leaf(
            root_key, key, serial=0x2222_2222_2222_2222, usage=usage, eku=[TS],
            not_before=now - 2 * day, not_after=now + 2 * day,
        )  # fmt: skip
        der = serialization.Encoding.DER
        assert len(self.signer.public_bytes(der)) == len(self.twin.public_bytes(der))
        (directory / "root.pem").write_bytes(self.root.public_bytes(PEM))
        (directory / "signer.pem").write_bytes(self.signer.public_bytes(PEM))
        (directory / "signer.key").write_bytes(
            key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (directory / "serial").write_text("01\n")
        config = TSA_CONFIG.format(serial=directory / "serial")
        assert "ess_cert_id_alg = sha256" in config
        config = config.replace("ess_cert_id_alg = sha256", f"ess_cert_id_alg = {ess_alg}")
        (directory / "tsa.cnf").write_text(config)

    def token(self, data: bytes) -> bytes:
        (self.dir / "data.bin").write_bytes(data)
        query = self.dir / "q.tsq"
        self.openssl(
            "ts", "-query", "-data", self.dir / "data.bin", "-sha256", "-cert", "-out", query
        )
        self.openssl(
            "ts", "-reply", "-config", self.dir / "tsa.cnf", "-queryfile", query,
            "-signer", self.dir / "signer.pem", "-inkey", self.dir / "signer.key",
            "-token_out", "-out", self.dir / "token.der",
        )  # fmt: skip
        return (self.dir / "token.der").read_bytes()

    def substituted(self, token: bytes) -> bytes:
        """``token`` with the twin embedded and named by the SignerInfo: only bytes outside
        the CMS signature change (the certificates field and the SignerInfo's serial)."""
        der = serialization.Encoding.DER
        signer, twin = self.signer.public_bytes(der), self.twin.public_bytes(der)
        assert token.count(signer) == 1
        swapped = token.replace(signer, twin)
        old = bytes([0x02, 8]) + self.signer.serial_number.to_bytes(8, "big")
        new = bytes([0x02, 8]) + self.twin.serial_number.to_bytes(8, "big")
        # The first occurrence is the SignerInfo's sid (the ESS issuerSerial, signed, follows).
        return swapped.replace(old, new, 1)

    def openssl_accepts(self, token: bytes, data: bytes) -> bool:
        (self.dir / "check.der").write_bytes(token)
        (self.dir / "data.bin").write_bytes(data)
        done = self.openssl.run(
            "ts", "-verify", "-token_in", "-in", self.dir / "check.der",
            "-data", self.dir / "data.bin", "-CAfile", self.dir / "root.pem",
        )  # fmt: skip
        return bool(done.returncode == 0)


@pytest.mark.parametrize("ess_alg", ["sha256", "sha1", "sha384", "sha512"])
def test_a_twin_certificate_slipped_into_a_token_is_refused(  # type: ignore[no-untyped-def]
    openssl, tmp_path: Path, ess_alg: str
) -> None:
    """Every form OpenSSL writes: signingCertificate (SHA-1), signingCertificateV2 with the
    default SHA-256 left out, and V2 naming SHA-384 or SHA-512."""
    tsa = _TwinTsa(tmp_path, openssl, signer_expired=False, ess_alg=ess_alg)
    data = b"signature bytes to timestamp"
    token = tsa.token(data)
    assert [a for a, _ in signing_certificate_hashes(token)] == [ess_alg]  # the form wanted
    verifier = RFC3161Verifier([tsa.root])
    # The harness makes good tokens: both verifiers accept the one the TSA wrote.
    assert tsa.openssl_accepts(token, data)
    assert verifier.verify(parse_token(token), data).ok
    swapped = tsa.substituted(token)
    assert parse_token(swapped).signer_certificate == tsa.twin
    assert not tsa.openssl_accepts(swapped, data)
    checked = verifier.verify(parse_token(swapped), data)
    assert checked.time is None
    assert "substituted" in (checked.failure or ""), checked.failure


def test_an_expired_tsa_certificate_cannot_hide_behind_a_valid_twin(  # type: ignore[no-untyped-def]
    openssl, tmp_path: Path
) -> None:
    """The threat: the certificate the TSA signed for had expired at genTime, and a twin
    valid at genTime is slipped in. Without the ESS check every other check passes."""
    tsa = _TwinTsa(tmp_path, openssl, signer_expired=True)
    data = b"signature bytes to timestamp"
    token = tsa.token(data)
    verifier = RFC3161Verifier([tsa.root])
    original = verifier.verify(parse_token(token), data)
    assert original.time is None and "expired" in (original.failure or "")
    swapped = verifier.verify(parse_token(tsa.substituted(token)), data)
    assert swapped.time is None
    assert "substituted" in (swapped.failure or ""), swapped.failure


# --- signed attributes rewritten and signed again with the TSA's own key ------------------------

#: id-aa-signingCertificate and id-aa-signingCertificateV2 (RFC 2634, RFC 5035), written out
#: here rather than taken from the module under test.
_ESS_V1 = bytes.fromhex("060b2a864886f70d010910020c")
_ESS_V2 = bytes.fromhex("060b2a864886f70d010910022f")


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + (n.to_bytes((n.bit_length() + 7) // 8, "big"))
    )
    return bytes([tag]) + size + content


def _elements(data: bytes, start: int, end: int) -> list[bytes]:
    return [data[s:e] for _, s, _, e in _children(data, start, end)]


def _resign(token: bytes, key: ec.EllipticCurvePrivateKey, edit) -> bytes:  # type: ignore[no-untyped-def]
    """``token`` with its SignerInfo's signed attributes replaced by ``edit(attributes)`` and
    signed again with the TSA's key: what a holder of the TSA key could write. The
    messageDigest attribute is kept, so the TSTInfo is still the one signed."""
    _, body, end = _tlv(token, 0, len(token))
    content_type, wrapper = _children(token, body, end)
    (signed_data,) = _children(token, wrapper[2], wrapper[3])
    fields = _elements(token, signed_data[2], signed_data[3])
    _, si_body, si_end = _tlv(fields[-1], 0, len(fields[-1]))
    (info,) = _elements(fields[-1], si_body, si_end)
    _, i_body, i_end = _tlv(info, 0, len(info))
    parts = _elements(info, i_body, i_end)
    _, a_body, a_end = _tlv(parts[3], 0, len(parts[3]))
    attributes = sorted(edit(_elements(parts[3], a_body, a_end)))  # DER orders a SET OF
    signature = key.sign(_der(0x31, b"".join(attributes)), ec.ECDSA(hashes.SHA256()))
    parts[3] = _der(0xA0, b"".join(attributes))
    parts[5] = _der(0x04, signature)
    fields[-1] = _der(0x31, _der(0x30, b"".join(parts)))
    inner = _der(0xA0, _der(0x30, b"".join(fields)))
    return _der(0x30, token[content_type[1] : content_type[3]] + inner)


def _is_ess(attribute: bytes) -> bool:
    _, body, _ = _tlv(attribute, 0, len(attribute))
    return attribute[body : body + len(_ESS_V2)] in (_ESS_V1, _ESS_V2)


def test_a_token_that_names_no_certificate_is_refused(openssl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """RFC 3161 2.4.1 requires the ESS attribute: without it nothing binds the embedded
    certificate to the signature. A token re-signed without it is refused by OpenSSL and by
    us; the same token re-signed unchanged is accepted by both (the rewriting is sound)."""
    tsa = _TwinTsa(tmp_path, openssl, signer_expired=False)
    data = b"signature bytes to timestamp"
    token = tsa.token(data)
    verifier = RFC3161Verifier([tsa.root])
    same = _resign(token, tsa.key, lambda attributes: attributes)
    assert tsa.openssl_accepts(same, data)
    assert verifier.verify(parse_token(same), data).ok
    stripped = _resign(token, tsa.key, lambda attributes: [a for a in attributes if not _is_ess(a)])
    assert signing_certificate_hashes(stripped) == ()
    assert not tsa.openssl_accepts(stripped, data)
    checked = verifier.verify(parse_token(stripped), data)
    assert checked.time is None
    assert "names no TSA certificate" in (checked.failure or ""), checked.failure


def _ess(oid: bytes, cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """A signingCertificate (V1, SHA-1) or signingCertificateV2 (SHA-256, the default left
    out) attribute naming ``cert``."""
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    cert_id = _der(0x30, _der(0x04, digest.finalize()))
    return _der(0x30, oid + _der(0x31, _der(0x30, _der(0x30, cert_id))))


@pytest.mark.parametrize("twin_in", ["V1", "V2", "neither"])
def test_a_second_ess_attribute_naming_a_twin_is_refused(  # type: ignore[no-untyped-def]
    openssl, tmp_path: Path, twin_in: str
) -> None:
    """Duplicated binding: one ESS attribute names the embedded certificate, the other (V1
    or V2, so the twin is first in one case and last in the other) names its twin. Every
    such attribute must name the embedded certificate. With both naming it (the control),
    OpenSSL and we accept the rewritten token."""
    tsa = _TwinTsa(tmp_path, openssl, signer_expired=False)
    data = b"signature bytes to timestamp"
    token = tsa.token(data)
    v1_names = tsa.twin if twin_in == "V1" else tsa.signer
    v2_names = tsa.twin if twin_in == "V2" else tsa.signer
    both = [_ess(_ESS_V1, v1_names, hashes.SHA1()), _ess(_ESS_V2, v2_names, hashes.SHA256())]
    doubled = _resign(
        token, tsa.key, lambda attributes: [*(a for a in attributes if not _is_ess(a)), *both]
    )
    assert sorted(a for a, _ in signing_certificate_hashes(doubled)) == ["sha1", "sha256"]
    checked = RFC3161Verifier([tsa.root]).verify(parse_token(doubled), data)
    if twin_in == "neither":
        assert tsa.openssl_accepts(doubled, data)
        assert checked.ok, checked.failure
        return
    assert not tsa.openssl_accepts(doubled, data)
    assert checked.time is None
    assert "substituted" in (checked.failure or ""), checked.failure
