"""The stored proofs that belong to one trust anchor (``stellaops anchor status``).

A proof belongs to an anchor when its in-toto statement names a PURL subject the anchor's
pattern matches (``manager_values.subject_purls`` + ``safe_match``: strict JSON, checked
statement; the first matching subject is the one verified). Before issue 20 that was decided
for every proof of the home, parsing the same PURL again for every proof naming it. Callers
now pass the store's ``iter_proof_candidates(pattern.index_key)``: the proofs the subject
index (migration 0009, stellakeys.proof_index) files under the pattern's key, plus any not
indexed yet, a superset decided here the strict way, so the cost grows with the anchor's
proofs, not the home's (for the universal pattern ``*``: one streamed pass over every
proof). Each distinct PURL is matched (parsed) once per call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from stellakeys.dsse import Envelope
from stellakeys.manager_values import safe_match, subject_purls
from stellakeys.purl_pattern import PurlPattern
from stellakeys.storage.ports import ProofRecord

__all__ = ["proofs_of_anchor"]


def proofs_of_anchor(
    proofs: Iterable[ProofRecord],
    pattern: PurlPattern,
    matched: dict[str, bool] | None = None,
) -> Iterator[tuple[ProofRecord, Envelope, str]]:
    """``(proof, envelope, purl)`` for every proof of ``proofs`` whose statement names a PURL
    the pattern matches (``purl``: the first such subject), in the order given. ``matched``
    (PURL -> whether the pattern matches it) carries the decisions from one chunk of a long
    list to the next."""
    if matched is None:
        matched = {}

    def matches(purl: str) -> bool:
        hit = matched.get(purl)
        if hit is None:
            hit = matched[purl] = safe_match(pattern, purl)
        return hit

    for proof in proofs:
        envelope = Envelope.from_json(proof.envelope_json)
        purl = next((p for p in subject_purls(envelope) if matches(p)), None)
        if purl is not None:
            yield proof, envelope, purl
