"""The operations dual control protects, and the ceremony type that authorises each.

A module of its own (names only, over the ceremony model) so that the policy, the storage ports
and the operations can all import it without importing each other.
"""

from __future__ import annotations

from stellakeys.ceremony.model import (
    HSM_KEY_GENERATION,
    KEY_REVOCATION,
    KEY_ROTATION,
    TRUST_ANCHOR_UPDATE,
)

__all__ = [
    "CEREMONY_FOR_OPERATION",
    "OP_HSM_KEY_GENERATION",
    "OP_KEY_GENERATION",
    "OP_KEY_REVOCATION",
    "OP_KEY_ROTATION",
    "OP_TRUST_ANCHOR_UPDATE",
    "PROTECTED_OPERATIONS",
]

# Operation names the facade gives its authorizer (stellakeys.manager uses these; the facade
# imports this package, never the other way round).
OP_HSM_KEY_GENERATION = "hsm-key-generation"
OP_KEY_GENERATION = "key-generation"
OP_KEY_REVOCATION = "key-revocation"
OP_KEY_ROTATION = "key-rotation"
OP_TRUST_ANCHOR_UPDATE = "trust-anchor-update"
#: Operations that need an executed ceremony when ceremonies are enabled.
PROTECTED_OPERATIONS = frozenset(
    {OP_HSM_KEY_GENERATION, OP_KEY_REVOCATION, OP_KEY_ROTATION, OP_TRUST_ANCHOR_UPDATE}
)
#: The ceremony type that authorises each protected operation, for error messages.
CEREMONY_FOR_OPERATION = {
    OP_HSM_KEY_GENERATION: HSM_KEY_GENERATION,
    OP_KEY_REVOCATION: KEY_REVOCATION,
    OP_KEY_ROTATION: KEY_ROTATION,
    OP_TRUST_ANCHOR_UPDATE: TRUST_ANCHOR_UPDATE,
}
