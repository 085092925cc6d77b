"""An anchor's keys, compiled once for verification. Pure.

Verifying used to walk the anchor's whole key history on every call: apply key-wide
compromises to each entry, test each entry's window at T, parse each public key. With 300
rotations that is 300 entries for the one key that signed. :class:`AnchorKeys` does the
per-anchor work once (compromises applied, entries indexed by key id and by fingerprint,
public keys parsed on first use) so that a verification looks up only the keys its
signatures name. Sources (:mod:`stellakeys.store_source`, :class:`~stellakeys.verifier.
StaticSource`) build one per anchor and keep it as long as the anchor is unchanged.

A signature's ``keyid`` is a hint, not authenticated: narrowing to the hinted keys is only a
first attempt. :func:`stellakeys.verification.evaluate` falls back to every key of the anchor
whenever a signature does not verify with the keys named, so the verdict and the keys
reported are the same as without hints (tests/test_anchor_keys.py compares the two on
random histories, hints and signers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from stellakeys.anchors import KeyHistoryEntry
from stellakeys.crypto import PublicKey
from stellakeys.key_validity import _usable, _with_compromise
from stellakeys.keys import public_key_of_pem
from stellakeys.signing_time import SigningTime

__all__ = ["AnchorKeys"]


class AnchorKeys:
    """The entries of one anchor's key history as verification sees them (key-wide
    compromises applied), indexed by the hints a signature may carry. Immutable."""

    __slots__ = ("_by_hint", "_position", "entries")

    def __init__(
        self, history: Sequence[KeyHistoryEntry], compromises: Mapping[str, datetime]
    ) -> None:
        #: The anchor's history in its order, each entry revoked from the earliest
        #: compromise of its key in any anchor.
        self.entries: tuple[KeyHistoryEntry, ...] = tuple(
            _with_compromise(e, compromises) if compromises else e for e in history
        )
        by_hint: dict[str, list[KeyHistoryEntry]] = {}
        for e in self.entries:
            by_hint.setdefault(e.key_id, []).append(e)
            if e.fingerprint != e.key_id:
                by_hint.setdefault(e.fingerprint, []).append(e)
        self._by_hint = {k: tuple(v) for k, v in by_hint.items()}
        #: An entry's place in the history (several signatures' hints are merged in order).
        self._position = {id(e): i for i, e in enumerate(self.entries)}

    def hinted(self, hints: Sequence[str | None]) -> tuple[KeyHistoryEntry, ...] | None:
        """The entries the signatures' hints name (key id or fingerprint), in history order;
        None when a signature has no hint or one names no entry (then every entry is a
        candidate)."""
        if len(hints) == 1:  # the common case: one signature
            hint = hints[0]
            return None if hint is None else self._by_hint.get(hint)
        found: dict[int, KeyHistoryEntry] = {}
        for hint in hints:
            named = self._by_hint.get(hint) if hint is not None else None
            if named is None:
                return None
            for e in named:
                found[id(e)] = e
        return tuple(sorted(found.values(), key=lambda e: self._position[id(e)]))

    @staticmethod
    def keyring_at(
        entries: Sequence[KeyHistoryEntry], at: SigningTime, require_trusted: bool
    ) -> dict[str, PublicKey]:
        """key id -> public key of the ``entries`` that can vouch for a signature at ``at``.

        One key id should name one key; a store written around the library could hold two
        keys under one id in an anchor. Both are kept (the later one under its fingerprint)
        so that no usable key is silently dropped from the ring, whichever subset of the
        entries is asked for (hypothesis found the shadowing in tests/test_anchor_keys.py).
        """
        ring: dict[str, PublicKey] = {}
        for e in entries:
            if not _usable(e, at, require_trusted):
                continue
            key = public_key_of_pem(e.public_key_pem)
            known = ring.get(e.key_id)
            if known is None or known.fingerprint == key.fingerprint:
                ring[e.key_id] = key
            else:
                ring[e.fingerprint] = key
        return ring
