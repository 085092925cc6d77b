"""The subject index of stored proofs (issue 20): which PURL lookup keys a proof is found by.

Pure. Storage adapters call :func:`proof_index_keys` when they store a proof and keep the
keys in ``proof_subject_keys``; ``anchor status`` then reads the proofs filed under its
pattern's ``index_key`` instead of every proof of the home.
"""

from __future__ import annotations

from stellakeys.binding import payload_facts
from stellakeys.dsse import Envelope
from stellakeys.errors import DuplicateMemberError, MalformedEnvelopeError, MalformedPurlError
from stellakeys.purl_pattern import lookup_keys_for

__all__ = ["proof_index_keys"]


def proof_index_keys(envelope_json: bytes) -> set[str]:
    """Every non-empty :func:`~stellakeys.purl_pattern.lookup_keys_for` key of the PURL
    subjects of the envelope's statement, read exactly as ``anchor status`` reads them (strict
    envelope and statement; a malformed PURL matches no pattern). Empty when the envelope or
    its statement is malformed or names no PURL: no pattern but ``*`` can match such a proof.
    """
    try:
        facts = payload_facts(Envelope.from_json(envelope_json))
    except (MalformedEnvelopeError, DuplicateMemberError):
        return set()
    if facts.error is not None:
        return set()
    keys: set[str] = set()
    for name in facts.subjects:
        if not name.startswith("pkg:"):
            continue
        try:
            keys.update(lookup_keys_for(name))
        except MalformedPurlError:
            continue
    keys.discard("")
    return keys
