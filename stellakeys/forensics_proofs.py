"""The forensic question: which proofs did a key sign, and which of them still verify?

:func:`proofs_signed_by` and its answer (:class:`Findings` of :class:`SignedProof`), with
their table and HTML forms, and the optional-dependency helpers the notebook functions share.
Split out of :mod:`stellakeys.forensics` in issue 16; every name is re-exported there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.dsse import Envelope, verify_envelope
from stellakeys.errors import StellaKeysError
from stellakeys.intoto import PAYLOAD_TYPE as INTOTO_PAYLOAD_TYPE
from stellakeys.intoto import Statement
from stellakeys.keys import public_key_of_pem

# The HTML renderers live in the notebook module (the edge); re-exported here for callers of
# forensics.result_html / anchor_html / history_entry_html.
from stellakeys.notebook import (
    _STYLE_FAIL,
    _STYLE_OK,
    _e,
)
from stellakeys.times import format_time
from stellakeys.verification import TimeSource, VerificationResult

if TYPE_CHECKING:
    from stellakeys.manager import KeyManager


__all__ = ["Findings", "SignedProof", "proofs_signed_by"]

_NOTEBOOK_EXTRA = "pip install 'stellakeys[notebook]'"


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(
            f"DataFrame export needs pandas, from the 'notebook' extra: {_NOTEBOOK_EXTRA}"
        ) from None
    return pandas


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            f"the timeline plot needs matplotlib, from the 'notebook' extra: {_NOTEBOOK_EXTRA}"
        ) from None
    return plt


def _t(value: datetime | None) -> str:
    return format_time(value) if value is not None else ""


# --- the forensic question ---------------------------------------------------------------------


@attrs.frozen
class SignedProof:
    """One proof a key signed, and how it verifies at its own signing time."""

    digest: str
    key_id: str
    purl: str | None
    #: When the store recorded the proof (the signer's clock: asserted, never trusted).
    recorded_at: datetime | None
    #: Every registered key whose signature on the proof verifies.
    signed_by: tuple[str, ...]
    #: Verification at the signing time (trusted where a stored token covers a signature).
    result: VerificationResult
    #: False for envelopes found outside the store (no recorded time: verified now).
    stored: bool = True

    @property
    def still_valid(self) -> bool:
        return self.result.ok

    @property
    def key_time_source(self) -> TimeSource:
        """Where the time of *this key's* signature came from."""
        for kt in self.result.key_times:
            if kt.key_id == self.key_id:
                return kt.time.source
        return self.result.time_source

    @property
    def key_time(self) -> datetime:
        for kt in self.result.key_times:
            if kt.key_id == self.key_id:
                return kt.time.at
        return self.result.time

    def to_dict(self) -> dict[str, Any]:
        return {
            "proof": self.digest,
            "keyId": self.key_id,
            "purl": self.purl,
            "recordedAt": _t(self.recorded_at) or None,
            "signedBy": list(self.signed_by),
            "stillValid": self.still_valid,
            "time": _t(self.key_time),
            "timeSource": self.key_time_source.value,
            "verifiedBy": [k.key_id for k in self.result.verified_keys],
            "reasons": list(self.result.reasons),
            "stored": self.stored,
        }


@attrs.frozen
class Findings:
    """The answer of :func:`proofs_signed_by`, oldest proof first."""

    key_id: str
    proofs: tuple[SignedProof, ...]

    def __iter__(self) -> Iterator[SignedProof]:
        return iter(self.proofs)

    def __len__(self) -> int:
        return len(self.proofs)

    @property
    def still_valid(self) -> tuple[SignedProof, ...]:
        return tuple(p for p in self.proofs if p.still_valid)

    @property
    def invalid(self) -> tuple[SignedProof, ...]:
        return tuple(p for p in self.proofs if not p.still_valid)

    def to_dict(self) -> dict[str, Any]:
        return {"keyId": self.key_id, "proofs": [p.to_dict() for p in self.proofs]}

    def to_dataframe(self) -> Any:
        pd = _pandas()
        rows = [
            {
                "proof": p.digest,
                "purl": p.purl,
                "recorded_at": p.recorded_at,
                "time": p.key_time,
                "time_source": p.key_time_source.value,
                "still_valid": p.still_valid,
                "verified_by": ", ".join(k.key_id for k in p.result.verified_keys),
                "signed_by": ", ".join(p.signed_by),
                "reasons": "; ".join(p.result.reasons),
                "stored": p.stored,
            }
            for p in self.proofs
        ]
        frame = pd.DataFrame(
            rows,
            columns=[
                "proof",
                "purl",
                "recorded_at",
                "time",
                "time_source",
                "still_valid",
                "verified_by",
                "signed_by",
                "reasons",
                "stored",
            ],
        )
        for col in ("recorded_at", "time"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        return frame

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>"
            f"<td><code>{_e(p.digest)}</code></td><td>{_e(p.purl or '-')}</td>"
            f"<td>{_e(_t(p.key_time))} ({_e(p.key_time_source.value)})</td>"
            + (
                f"<td style='{_STYLE_OK}'>valid</td>"
                if p.still_valid
                else f"<td style='{_STYLE_FAIL}'>invalid</td>"
            )
            + f"<td>{_e(', '.join(k.key_id for k in p.result.verified_keys) or '-')}</td>"
            f"<td>{_e('; '.join(p.result.reasons))}</td>"
            "</tr>"
            for p in self.proofs
        )
        head = "".join(
            f"<th>{h}</th>"
            for h in ("Proof", "Artifact", "Signing time", "Verdict", "Verified by", "Reasons")
        )
        title = (
            f"<div><b>{len(self.proofs)} proof(s) signed by {_e(self.key_id)}</b>: "
            f"{len(self.still_valid)} still valid, {len(self.invalid)} invalid</div>"
        )
        return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _purl_of(envelope: Envelope) -> str | None:
    if envelope.payload_type != INTOTO_PAYLOAD_TYPE:
        return None
    try:
        statement = Statement.from_json(envelope.payload)
    except StellaKeysError:
        return None
    return next((s.name for s in statement.subjects if s.name.startswith("pkg:")), None)


def proofs_signed_by(
    manager: KeyManager,
    key_id: str,
    *,
    envelopes: Iterable[Envelope | bytes | str] = (),
) -> Findings:
    """Which proofs did ``key_id`` sign, and which are still valid?

    Looks at every stored proof, plus ``envelopes`` found elsewhere (a registry, an
    attacker's leftovers). A proof counts when one of its signatures verifies with the key's
    public key, whatever its ``keyid`` says. Each is then verified as a relying party would:
    at its signing time, which is trusted where an RFC 3161 token stored with the proof covers
    the signature, and otherwise the time the store recorded (asserted). Outside envelopes
    have no recorded time and are verified now.

    Under the compromise rule a proof signed only by a compromised key is valid only with a
    trusted time before the revocation; a proof also signed by another trusted key can stay
    valid through that key.
    """
    target = manager.get_key(key_id)
    target_key = {key_id: public_key_of_pem(target.public_key_pem)}
    everyone = {k.key_id: public_key_of_pem(k.public_key_pem) for k in manager.list_keys()}
    with manager.store.read() as tx:
        records = list(tx.iter_proofs())  # oldest first (the port's order)
    found: list[SignedProof] = []
    for record in records:
        envelope = Envelope.from_json(record.envelope_json)
        if not verify_envelope(envelope, target_key, 1).ok:
            continue
        result = manager.verify(record.digest, at=record.created_at)
        found.append(
            SignedProof(
                digest=record.digest,
                key_id=key_id,
                purl=result.purl or _purl_of(envelope),
                recorded_at=record.created_at,
                signed_by=_all_signers(envelope, everyone),
                result=result,
            )
        )
    for item in envelopes:
        envelope = item if isinstance(item, Envelope) else Envelope.from_json(item)
        if not verify_envelope(envelope, target_key, 1).ok:
            continue
        result = manager.verify(envelope)
        found.append(
            SignedProof(
                digest=envelope.digest(),
                key_id=key_id,
                purl=result.purl or _purl_of(envelope),
                recorded_at=None,
                signed_by=_all_signers(envelope, everyone),
                result=result,
                stored=False,
            )
        )
    return Findings(key_id, tuple(found))


def _all_signers(envelope: Envelope, keys: dict[str, Any]) -> tuple[str, ...]:
    return tuple(k for k, pub in keys.items() if verify_envelope(envelope, {k: pub}, 1).ok)
