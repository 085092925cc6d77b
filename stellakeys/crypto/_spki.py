"""Just enough DER to read the algorithm identifier of a SubjectPublicKeyInfo.

Why hand-written: we only need two OIDs to dispatch a key to its backend before any backend
can parse it (``cryptography`` rejects SM2 and GOST keys outright), and a full ASN.1 library
for three TLVs would be a heavier dependency than this reader. It is strict: definite lengths,
minimal length encoding, no trailing bytes.
"""

from __future__ import annotations

from typing import NamedTuple

from stellakeys.errors import MalformedKeyError

_SEQUENCE = 0x30
_OID = 0x06
_BIT_STRING = 0x03


class SpkiAlgorithm(NamedTuple):
    oid: str
    #: The parameter when it is an OID (EC named curve), or the first OID inside a parameter
    #: SEQUENCE (GOST paramset); None otherwise.
    parameter_oid: str | None


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, start of value, end of value) of the TLV at ``pos``."""
    if pos + 2 > len(data):
        raise MalformedKeyError("truncated DER")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise MalformedKeyError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise MalformedKeyError("non-minimal DER length")
        pos += count
    end = pos + length
    if end > len(data):
        raise MalformedKeyError("truncated DER")
    return tag, pos, end


def _decode_oid(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise MalformedKeyError("bad OID encoding")
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(body):
        if value == 0 and byte == 0x80 and (i == 0 or not body[i - 1] & 0x80):
            raise MalformedKeyError("non-minimal OID arc")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def read_spki_algorithm(spki_der: bytes) -> SpkiAlgorithm:
    tag, start, end = _read_tlv(spki_der, 0)
    if tag != _SEQUENCE or end != len(spki_der):
        raise MalformedKeyError("SubjectPublicKeyInfo is not one DER SEQUENCE")
    tag, alg_start, alg_end = _read_tlv(spki_der, start)
    if tag != _SEQUENCE:
        raise MalformedKeyError("SubjectPublicKeyInfo lacks an AlgorithmIdentifier")
    tag, oid_start, oid_end = _read_tlv(spki_der, alg_start)
    if tag != _OID:
        raise MalformedKeyError("AlgorithmIdentifier lacks an OID")
    oid = _decode_oid(spki_der[oid_start:oid_end])
    parameter: str | None = None
    if oid_end < alg_end:
        tag, p_start, p_end = _read_tlv(spki_der, oid_end)
        if tag == _OID:
            parameter = _decode_oid(spki_der[p_start:p_end])
        elif tag == _SEQUENCE and p_start < p_end:
            tag, q_start, q_end = _read_tlv(spki_der, p_start)
            if tag == _OID:
                parameter = _decode_oid(spki_der[q_start:q_end])
    tag, _, key_end = _read_tlv(spki_der, alg_end)
    if tag != _BIT_STRING or key_end != end:
        raise MalformedKeyError("SubjectPublicKeyInfo lacks its key BIT STRING")
    return SpkiAlgorithm(oid, parameter)


def read_spki_key_bits(spki_der: bytes) -> bytes:
    """The subjectPublicKey BIT STRING's bytes (for EC keys: the SEC 1 point encoding).

    Only whole bytes make sense for a key, so a non-zero unused-bits count is malformed.
    """
    read_spki_algorithm(spki_der)  # the whole structure first, strictly
    _, start, _ = _read_tlv(spki_der, 0)
    _, _, alg_end = _read_tlv(spki_der, start)
    _, key_start, key_end = _read_tlv(spki_der, alg_end)
    if key_start == key_end or spki_der[key_start] != 0:
        raise MalformedKeyError("SubjectPublicKeyInfo key BIT STRING has unused bits")
    return spki_der[key_start + 1 : key_end]
