"""One stored proof read in one statement on PostgreSQL: the proof, its RFC 3161 tokens and,
in strict mode, the change token, all in the statement's one snapshot (decision 0030).

Verifying a stored proof by its ``sha256:`` address (``stellaops verify --proof-bundle
sha256:...``, each proof verified once) used to cost a read transaction (BEGIN, the proof, its
tokens, COMMIT) and then the change-token read: several round trips per proof. The statement
here is run in autocommit mode on an idle pooled connection: PostgreSQL takes one snapshot for
a statement and all its subqueries, so the proof, its tokens and ``change_counter`` agree, and
the snapshot is taken after the caller asked (so after its verification started): every commit
that finished before then is counted in the counter, which is what the strict change token
promises. No named statement is needed (through PgBouncer in transaction mode psycopg prepares
nothing; directly, the statement it prepares lives and dies with its pooled connection).
"""

# S608: the statements are module constants; the digest is always a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import stellakeys.storage._codec as codec
from stellakeys.errors import StorageError
from stellakeys.storage._postgres_sql import proof_from_pg_row
from stellakeys.storage.ports import ProofRecord

__all__ = ["PROOF_AND_TOKEN_SQL", "PROOF_SQL", "proof_and_token"]

_FROM = (
    " FROM signer.proofs AS p LEFT JOIN signer.proof_timestamps AS t ON t.digest = p.digest"
    " WHERE p.digest = %s ORDER BY t.id"
)
#: The proof with its tokens (the rows of ``get_proof``).
PROOF_SQL: Final = "SELECT p.digest, p.envelope_json, p.created_at, t.token" + _FROM
#: The same and ``change_counter``: an uncorrelated scalar subquery, evaluated once, in the
#: statement's snapshot.
PROOF_AND_TOKEN_SQL: Final = (
    "SELECT p.digest, p.envelope_json, p.created_at, t.token,"
    " (SELECT s.change_counter FROM signer.store_state AS s WHERE s.id = 1)" + _FROM
)
_NO_ROW: Final = "signer.store_state has no row: run stellaops db migrate"


def proof_and_token(
    rows: Sequence[Sequence[Any]], with_token: bool
) -> tuple[ProofRecord | None, int | None]:
    """(the proof or None, the change counter or None) from the rows of :data:`PROOF_SQL` or
    :data:`PROOF_AND_TOKEN_SQL`. The stored bytes must hash to the address
    (ProofIntegrityError otherwise): what the database returns is evidence, not truth."""
    # The counter, when selected, rides after the token: group_proofs reads column 3 only.
    record = next(codec.group_proofs(rows, proof_from_pg_row), None)
    if record is None or not with_token:
        return record, None
    if rows[0][4] is None:
        raise StorageError(_NO_ROW)
    return record, int(rows[0][4])
