"""Rows of the ``key_intents`` table. SQLite and memory keep instants as microseconds and
JSON as text; ``native=True`` is PostgreSQL's form (aware datetimes, jsonb decoded by psycopg)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stellakeys.intents import KeyIntent
from stellakeys.storage._codec import check_aware, dump_json, from_micros, load_json, to_micros

__all__ = ["INTENT_COLUMNS", "intent_from_row", "intent_to_row"]

INTENT_COLUMNS = (
    "key_id, operation, profile, algorithm, key_store, created_at, params, public_key,"
    " fingerprint, key_store_uri"
)

Row = tuple[Any, ...]


def intent_to_row(i: KeyIntent, *, native: bool = False) -> Row:
    return (
        i.key_id,
        i.operation,
        i.profile,
        i.algorithm,
        i.key_store,
        check_aware(i.created_at) if native else to_micros(i.created_at),
        dump_json(dict(i.params)),
        i.public_key_pem,
        i.fingerprint,
        i.key_store_uri,
    )


def intent_from_row(row: Sequence[Any], *, native: bool = False) -> KeyIntent:
    return KeyIntent(
        key_id=row[0],
        operation=row[1],
        profile=row[2],
        algorithm=row[3],
        key_store=row[4],
        created_at=row[5] if native else from_micros(row[5]),
        params=(row[6] or {}) if native else load_json(row[6]),
        public_key_pem=row[7],
        fingerprint=row[8],
        key_store_uri=row[9],
    )
