"""The stored proofs that belong to one trust anchor (``stellaops anchor status``), streamed.

A proof belongs to an anchor when the first PURL subject of its in-toto statement that the
anchor's pattern matches exists (``manager_values.subject_purls`` + ``safe_match``: strict
JSON, checked statement). Deciding that for every proof of the home the strict way cost
~300 us a proof, most of it on proofs of other anchors, and parsed the same PURL again for
every proof naming it (issue 20). Here each proof is first read with the plain C JSON parser
and rejected when none of its subject names matches; only the survivors go the strict way,
which has the last word. The shortcut is sound: whenever the strict parse succeeds the plain
parse returns the same document (strict JSON only refuses more), so a proof the plain parse
finds no match in is one the strict path finds no match in either; anything the plain parse
cannot read is handed to the strict path. Each distinct PURL is matched (parsed) once per
call.

Callers pass the store's ``iter_proof_candidates(pattern.index_key)`` (the subject index of
migration 0008: the proofs filed under the pattern's key, plus any not yet indexed), so the
cost grows with the anchor's proofs, not the home's; for the universal pattern ``*`` it is
one streamed pass over every proof.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from stellakeys.dsse import Envelope, b64decode
from stellakeys.manager_values import safe_match, subject_purls
from stellakeys.purl_pattern import PurlPattern
from stellakeys.storage.ports import ProofRecord

__all__ = ["proofs_of_anchor"]


def _candidate_names(envelope_json: bytes) -> list[str] | None:
    """The PURL-looking subject names as a lenient parse sees them; None when the lenient
    parse cannot tell (the strict path decides)."""
    try:
        obj: Any = json.loads(envelope_json)
        statement: Any = json.loads(b64decode(obj["payload"]))
        subjects = statement["subject"]
        names = [s.get("name") for s in subjects]
    except Exception:
        return None
    if not all(n is None or isinstance(n, str) for n in names):
        return None
    return [n for n in names if n is not None and n.startswith("pkg:")]


def proofs_of_anchor(
    proofs: Iterable[ProofRecord], pattern: PurlPattern
) -> Iterator[tuple[ProofRecord, Envelope, str]]:
    """``(proof, envelope, purl)`` for every proof of ``proofs`` whose statement names a PURL
    the pattern matches (``purl``: the first such subject), in the order given."""
    matched: dict[str, bool] = {}

    def matches(purl: str) -> bool:
        hit = matched.get(purl)
        if hit is None:
            hit = matched[purl] = safe_match(pattern, purl)
        return hit

    for proof in proofs:
        names = _candidate_names(proof.envelope_json)
        if names is not None and not any(matches(n) for n in names):
            continue
        envelope = Envelope.from_json(proof.envelope_json)
        purl = next((p for p in subject_purls(envelope) if matches(p)), None)
        if purl is not None:
            yield proof, envelope, purl
