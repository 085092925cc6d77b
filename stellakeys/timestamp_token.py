"""RFC 3161 timestamp tokens: the DER plumbing around a TSA reply and the parsed token.

Parsing only; :mod:`stellakeys.timestamp` verifies tokens, requests them from a TSA and
re-exports every name here (split out of ``timestamp.py`` in issue 16, which describes the
shapes of tokens accepted).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.errors import TimestampError
from stellakeys.times import format_time

if TYPE_CHECKING:
    from cryptography import x509


__all__ = [
    "MAX_REPLY_BYTES",
    "AddedTimestamp",
    "TimestampToken",
    "parse_token",
    "signing_certificate_hashes",
]

#: The largest TSA reply we read; real ones are a few KiB (token plus a short chain).
MAX_REPLY_BYTES = 1 << 20

#: Imprint hash algorithms we accept, by OID. SHA-1 and MD5 are refused on purpose: a
#: collision would let one token vouch for two different signatures.
_HASHES: Mapping[str, str] = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_REQUEST_HASHES = ("sha256", "sha512")  # what rfc3161-client's request builder can ask for

_STATUS = {
    0: "granted",
    1: "grantedWithMods",
    2: "rejection",
    3: "waiting",
    4: "revocationWarning",
    5: "revocationNotification",
}


# --- DER plumbing ----------------------------------------------------------------------------
# rfc3161-client parses only a TimeStampResp, and only strict DER. Two things real tokens need
# before it sees them, done on the outer structure only (never on signed bytes):
# * a bare TimeStampToken is wrapped in a TimeStampResp with status "granted";
# * the SignedData ``certificates`` SET OF is put in DER order. ``openssl ts -reply -chain``
#   (and other TSAs) emit the chain in chain order, which DER forbids; that field is outside
#   the CMS signature, so reordering it changes nothing that is verified.

_SEQUENCE, _SET, _OID, _INTEGER, _CONTEXT_0 = 0x30, 0x31, 0x06, 0x02, 0xA0


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, first content byte, end of content) of the element at ``pos``; definite lengths
    only, as DER requires."""
    if pos + 2 > end:
        raise TimestampError("malformed timestamp: truncated DER")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise TimestampError("malformed timestamp: unexpected high tag number")
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise TimestampError("malformed timestamp: bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > end:
        raise TimestampError("malformed timestamp: DER length runs past the end")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, element start, content start, element end) of each element in ``[start, end)``."""
    out = []
    while start < end:
        tag, body, stop = _tlv(data, start, end)
        out.append((tag, start, body, stop))
        start = stop
    return out


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _split_reply(der: bytes) -> tuple[int, str, bytes | None]:
    """(status, status text, bare token or None) of a TimeStampResp or a bare token."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise TimestampError("a timestamp token must be DER bytes")
    der = bytes(der)
    if der[:1] == b"-":
        raise TimestampError("timestamp token is PEM or text; give the DER bytes")
    tag, body, end = _tlv(der, 0, len(der))
    if tag != _SEQUENCE or end != len(der):
        raise TimestampError("malformed timestamp: not a single DER SEQUENCE")
    kids = _children(der, body, end)
    if kids and kids[0][0] == _OID:  # ContentInfo: a bare TimeStampToken
        return 0, "", der
    if not kids or kids[0][0] != _SEQUENCE or len(kids) > 2:
        raise TimestampError("malformed timestamp: neither a TimeStampResp nor a TimeStampToken")
    _, _, s_body, s_end = kids[0]
    status_parts = _children(der, s_body, s_end)
    if not status_parts or status_parts[0][0] != _INTEGER:
        raise TimestampError("malformed timestamp: TimeStampResp without a status")
    _, _, i_body, i_end = status_parts[0]
    status = int.from_bytes(der[i_body:i_end], "big", signed=True)
    text = _status_text(der, status_parts[1:])
    token = der[kids[1][1] : kids[1][3]] if len(kids) == 2 else None
    return status, text, token


def _status_text(der: bytes, parts: list[tuple[int, int, int, int]]) -> str:
    """The PKIFreeText strings of a PKIStatusInfo, best effort (they are only shown)."""
    texts = []
    for tag, _, body, end in parts:
        if tag != _SEQUENCE:
            continue
        for _, _, s_body, s_end in _children(der, body, end):
            texts.append(der[s_body:s_end].decode("utf-8", "replace"))
    return "; ".join(texts)


def _signed_data(token: bytes) -> list[tuple[int, int, int, int]]:
    """The fields of the SignedData inside a bare TimeStampToken (a CMS ContentInfo)."""
    _, body, end = _tlv(token, 0, len(token))
    info = _children(token, body, end)
    if len(info) != 2 or info[0][0] != _OID or info[1][0] != _CONTEXT_0:
        raise TimestampError("malformed timestamp: the token is not a CMS ContentInfo")
    wrapper = _children(token, info[1][2], info[1][3])
    if len(wrapper) != 1 or wrapper[0][0] != _SEQUENCE:
        raise TimestampError("malformed timestamp: the token does not hold a SignedData")
    return _children(token, wrapper[0][2], wrapper[0][3])


def _canonical_reply(token: bytes) -> bytes:
    """A granted TimeStampResp around ``token`` with its certificates in DER order."""
    for tag, _, c_body, c_end in _signed_data(token):
        if tag == _CONTEXT_0:  # certificates [0] IMPLICIT SET OF CertificateChoices
            certs = sorted(token[s:e] for _, s, _, e in _children(token, c_body, c_end))
            token = token[:c_body] + b"".join(certs) + token[c_end:]  # same length: in place
            break
    granted = bytes([_SEQUENCE, 3, _INTEGER, 1, 0])
    return bytes([_SEQUENCE]) + _length(len(granted) + len(token)) + granted + token


#: ESS attributes naming the signer's certificate (RFC 2634 5.4, RFC 5035 3), by the content
#: bytes of their OIDs: id-aa-signingCertificate (1.2.840.113549.1.9.16.2.12, SHA-1 hashes)
#: and id-aa-signingCertificateV2 (....2.47, SHA-256 unless it names another hash).
_SIGNING_CERTIFICATE = bytes.fromhex("2a864886f70d010910020c")
_SIGNING_CERTIFICATE_V2 = bytes.fromhex("2a864886f70d010910022f")
_ESS_HASHES = {
    bytes.fromhex("2b0e03021a"): "sha1",  # as in signingCertificate (V1); some TSAs write it
    bytes.fromhex("608648016503040201"): "sha256",
    bytes.fromhex("608648016503040202"): "sha384",
    bytes.fromhex("608648016503040203"): "sha512",
}
_OCTET_STRING = 0x04


def signing_certificate_hashes(token: bytes) -> tuple[tuple[str, bytes], ...]:
    """``(hash algorithm, certHash)`` of the certificate each ESS signing-certificate
    attribute among the SignerInfo's *signed* attributes names first (the signer's, RFC 5035
    3); empty when there is none. The SignerInfo's issuer and serial are not signed: these
    attributes are what binds the TSA's certificate to its signature. ``token`` is a bare
    TimeStampToken whose structure :func:`parse_token` has accepted."""
    signer_infos = _signed_data(token)[-1]
    infos = _children(token, signer_infos[2], signer_infos[3])
    if signer_infos[0] != _SET or len(infos) != 1 or infos[0][0] != _SEQUENCE:
        raise TimestampError("malformed timestamp: not exactly one SignerInfo")
    fields = _children(token, infos[0][2], infos[0][3])
    if len(fields) < 4 or fields[3][0] != _CONTEXT_0:
        return ()  # no signed attributes at all
    found = []
    for tag, _, a_body, a_end in _children(token, fields[3][2], fields[3][3]):
        parts = _children(token, a_body, a_end) if tag == _SEQUENCE else []
        if len(parts) != 2 or parts[0][0] != _OID or parts[1][0] != _SET:
            raise TimestampError("malformed timestamp: a signed attribute is not type and values")
        kind = token[parts[0][2] : parts[0][3]]
        if kind not in (_SIGNING_CERTIFICATE, _SIGNING_CERTIFICATE_V2):
            continue
        try:
            (value,) = _children(token, parts[1][2], parts[1][3])  # SigningCertificate(V2)
            certs = _children(token, value[2], value[3])[0]  # SEQUENCE OF ESSCertID(v2)
            first = _children(token, certs[2], certs[3])[0]
            cert_id = _children(token, first[2], first[3])
        except (ValueError, IndexError):
            raise TimestampError(
                "malformed timestamp: an empty signing-certificate attribute"
            ) from None
        algorithm = "sha1" if kind == _SIGNING_CERTIFICATE else "sha256"
        if kind == _SIGNING_CERTIFICATE_V2 and cert_id and cert_id[0][0] == _SEQUENCE:
            identifier = _children(token, cert_id[0][2], cert_id[0][3])  # AlgorithmIdentifier
            oid = token[identifier[0][2] : identifier[0][3]] if identifier else b""
            if oid not in _ESS_HASHES:
                raise TimestampError(
                    "its signing-certificate attribute uses an unsupported hash algorithm"
                )
            algorithm = _ESS_HASHES[oid]
            cert_id = cert_id[1:]
        if not cert_id or cert_id[0][0] != _OCTET_STRING:
            raise TimestampError("malformed timestamp: a signing-certificate id without a hash")
        found.append((algorithm, token[cert_id[0][2] : cert_id[0][3]]))
    return tuple(found)


# --- tokens -----------------------------------------------------------------------------------


def _guard_native(what: str, fn: Any) -> Any:
    """Call into rfc3161-client, turning any failure into TimestampError.

    Its Rust getters ``unwrap`` some inner parses; pyo3 turns a Rust panic into
    ``PanicException``, which derives from BaseException, not Exception. Catch that too (but
    never an interrupt), so hostile DER is a typed error, not a crash.
    """
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        raise TimestampError(f"malformed timestamp: {what}: {exc}") from None


@attrs.frozen
class TimestampToken:
    """A parsed RFC 3161 token. Parsed is not verified: see :class:`TimestampVerifier`."""

    #: The bare TimeStampToken (CMS ContentInfo) exactly as the TSA signed it: what we store.
    der: bytes = attrs.field(repr=False)
    gen_time: datetime
    #: The TSA's stated accuracy of genTime (None when the token gives none).
    accuracy: timedelta | None
    #: ``sha256``, ``sha384``, ``sha512``, or the dotted OID of an algorithm we do not accept.
    hash_algorithm: str
    imprint: bytes = attrs.field(repr=False)
    serial: int
    nonce: int | None
    policy: str | None
    #: The subject of the certificate that signed the token (as RFC 4514), if it is embedded.
    tsa_name: str | None
    #: The TSA certificate named by the SignerInfo, if the token embeds it (certReq).
    signer_certificate: x509.Certificate | None = attrs.field(repr=False, eq=False)
    #: rfc3161-client's view of the canonical reply, for verification.
    response: Any = attrs.field(repr=False, eq=False)

    @property
    def latest_time(self) -> datetime:
        """The latest instant the TSA vouches for: genTime plus its accuracy. Policy decisions
        use this, so a token can never look earlier than the TSA itself allows."""
        return self.gen_time + (self.accuracy or timedelta(0))

    def covers(self, data: bytes) -> bool:
        """Whether the message imprint is the hash of ``data`` (constant-time compare)."""
        if self.hash_algorithm not in _HASHES.values():
            return False
        return hmac.compare_digest(hashlib.new(self.hash_algorithm, data).digest(), self.imprint)

    def describe(self) -> str:
        who = self.tsa_name or "unknown TSA"
        return f"{who} serial {self.serial} at {format_time(self.gen_time)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "genTime": format_time(self.gen_time),
            "accuracySeconds": self.accuracy.total_seconds() if self.accuracy else None,
            "tsa": self.tsa_name,
            "serial": str(self.serial),
            "hashAlgorithm": self.hash_algorithm,
            "policy": self.policy,
            "nonce": str(self.nonce) if self.nonce is not None else None,
        }


def parse_token(der: bytes) -> TimestampToken:
    """Parse a TimeStampResp or a bare TimeStampToken (DER). TimestampError if it is not one,
    or if it is a TSA reply that grants no token."""
    status, text, token = _split_reply(der)
    if status not in (0, 1):
        name = _STATUS.get(status, str(status))
        raise TimestampError(f"the TSA refused: status {name}" + (f" ({text})" if text else ""))
    if token is None:
        raise TimestampError("the TSA reply carries no timestamp token")
    from rfc3161_client import decode_timestamp_response

    canonical = _canonical_reply(token)
    response = _guard_native("cannot decode", lambda: decode_timestamp_response(canonical))
    info = _guard_native("no TSTInfo", lambda: response.tst_info)
    imprint = _guard_native("no message imprint", lambda: info.message_imprint)
    oid = _guard_native("no imprint algorithm", lambda: imprint.hash_algorithm.dotted_string)
    gen_time = _guard_native("no genTime", lambda: info.gen_time)
    if not isinstance(gen_time, datetime) or gen_time.tzinfo is None:
        raise TimestampError("malformed timestamp: genTime is not an absolute time")
    accuracy = _guard_native("bad accuracy", lambda: _accuracy(info.accuracy))
    policy = _guard_native("bad policy", lambda: info.policy)
    signer = _guard_native("bad certificates", lambda: _signer_certificate(response))
    # cryptography parses names lazily: a damaged certificate fails here, not at load.
    tsa_name = _guard_native("bad TSA name", lambda: signer and signer.subject.rfc4514_string())
    return TimestampToken(
        der=token,
        gen_time=gen_time,
        accuracy=accuracy,
        hash_algorithm=_HASHES.get(oid, oid),
        imprint=bytes(_guard_native("no imprint", lambda: imprint.message)),
        serial=int(_guard_native("no serial", lambda: info.serial_number)),
        nonce=_guard_native("bad nonce", lambda: info.nonce),
        policy=policy.dotted_string if policy is not None else None,
        tsa_name=tsa_name,
        signer_certificate=signer,
        response=response,
    )


def _accuracy(value: Any) -> timedelta | None:
    if value is None:
        return None
    return timedelta(
        seconds=value.seconds or 0,
        milliseconds=value.millis or 0,
        microseconds=value.micros or 0,
    )


def _signer_certificate(response: Any) -> x509.Certificate | None:
    """The embedded certificate the SignerInfo names (issuer and serial), as the verifier does.
    Neither that identifier nor the certificates are covered by the CMS signature (rfc3161-client
    says otherwise): the signed ESS attribute is, and ``RFC3161Verifier`` checks that it names
    this certificate (:func:`signing_certificate_hashes`)."""
    from cryptography import x509

    infos = list(response.signed_data.signer_infos)
    if len(infos) != 1:
        return None
    issuer, serial = infos[0].issuer, infos[0].serial_number
    for der in response.signed_data.certificates:
        cert = x509.load_der_x509_certificate(der)
        if cert.issuer == issuer and cert.serial_number == serial:
            return cert
    return None


@attrs.frozen
class AddedTimestamp:
    """A token stored with a proof, and for which of its signatures."""

    signature_index: int
    #: The signature's keyid hint (unauthenticated; for people and the audit log).
    keyid: str | None
    token: TimestampToken
    #: Whether it was verified against configured TSA roots before it was stored.
    verified: bool
    #: The TSA URL it was requested from, or None for a token given to us.
    tsa_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "signatureIndex": self.signature_index,
            "keyId": self.keyid,
            **self.token.to_dict(),
            "verified": self.verified,
            "tsaUrl": self.tsa_url,
        }
