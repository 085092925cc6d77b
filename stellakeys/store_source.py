"""The Verifier's anchor and key sources over a store (the storage port).

Apart from :mod:`stellakeys.verifier` because verification (layer 4) must not depend on the
storage port (layer 5): the verifier knows only its ``AnchorSource`` / ``KeySource`` protocols,
and this adapter implements them with the store's PURL index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.anchors import KeyHistoryEntry
from stellakeys.keys import KeyRecord
from stellakeys.purl import lookup_keys_for, parse_purl
from stellakeys.verification import key_wide_compromises
from stellakeys.verifier import _NO_COMPROMISE, AnchorLookup, _by_fingerprint, select_anchor

if TYPE_CHECKING:
    from stellakeys.storage.ports import Store, Transaction

__all__ = ["StoreSource"]


class StoreSource:
    """Anchors and keys from a store, through its PURL index, remembered per PURL until the
    store's change token moves (verifying many proofs for one artifact costs one query)."""

    _MAX = 65536
    #: The cache key of the universal anchor (a PURL never starts with NUL).
    _UNIVERSAL = "\0*"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._token: object = object()
        self._by_purl: dict[str, AnchorLookup] = {}
        self._lock = threading.Lock()

    def lookup(self, purl: str) -> AnchorLookup:
        return self._cached(purl, lambda: parse_purl(purl))

    def universal(self) -> AnchorLookup:
        return self._cached(self._UNIVERSAL, lambda: None)

    def _cached(self, key: str, parse: Callable[[], Any]) -> AnchorLookup:
        token = self._store.change_token()
        with self._lock:
            if token != self._token:
                self._by_purl.clear()
                self._token = token
            hit = self._by_purl.get(key)
        if hit is not None:
            return hit
        parsed = parse()
        with self._store.read() as tx:
            answer = self._read(tx, parsed)
        with self._lock:
            if len(self._by_purl) >= self._MAX:
                self._by_purl.clear()
            self._by_purl[key] = answer
        return answer

    @staticmethod
    def _read(tx: Transaction, parsed: Any) -> AnchorLookup:
        index_keys = [""] if parsed is None else lookup_keys_for(parsed)
        found = select_anchor(tx.anchors_by_index_keys(index_keys), parsed)
        if found.anchor is None:
            return found
        fingerprints = {e.fingerprint for e in found.anchor.key_history}
        compromises = key_wide_compromises(tx.history_by_fingerprints(fingerprints))
        return attrs.evolve(
            found, compromises=MappingProxyType(compromises) if compromises else _NO_COMPROMISE
        )

    def key_only_view(
        self, key_ids: Collection[str]
    ) -> tuple[Sequence[KeyRecord], Mapping[str, Sequence[KeyHistoryEntry]]]:
        with self._store.read() as tx:
            records = [r for k in key_ids if (r := tx.get_key(k)) is not None] if key_ids else []
            if not records:
                records = tx.list_keys()
            found = _by_fingerprint(tx.history_by_fingerprints({r.fingerprint for r in records}))
        return records, {r.key_id: found.get(r.fingerprint, []) for r in records}
