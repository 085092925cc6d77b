"""The dual-control part of ``stellaops audit verify`` (kept apart from the chain check so
each can change without the other): protected changes that name no executed ceremony."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stellakeys.ceremony.audit_check import Finding
    from stellakeys.manager import KeyManager


def unauthorised_changes(manager: KeyManager) -> list[Finding]:
    from stellakeys.ceremony.audit_check import check_protected_operations

    with manager.store.read() as tx:
        return check_protected_operations(tx.iter_audit())
