"""Who is acting: an identity and the scopes it holds.

The host application builds an :class:`Actor` from its own authentication (an OIDC token's
subject and scopes, a break-glass account). The CLI derives one from ``--actor`` and the
scopes that ``approvers.yaml`` gives that identity; whatever the CLI claims, an approval
counts only if it is signed by a key registered for the identity it names.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from stellakeys.errors import PolicyError

__all__ = ["KNOWN_SCOPES", "SCOPE_APPROVE", "SCOPE_CANCEL", "Actor"]

#: May approve (or sign a rejection of) ceremonies of the types its groups allow.
SCOPE_APPROVE = "ceremony:approve"
#: May cancel ceremonies it did not initiate.
SCOPE_CANCEL = "ceremony:cancel"
KNOWN_SCOPES = frozenset({SCOPE_APPROVE, SCOPE_CANCEL})

MAX_IDENTITY = 320  # the longest e-mail address RFC 3696 allows


def _scopes(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen
class Actor:
    identity: str
    scopes: frozenset[str] = attrs.field(default=frozenset(), converter=_scopes)

    def __attrs_post_init__(self) -> None:
        check_identity(self.identity)

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def to_dict(self) -> dict[str, object]:
        return {"identity": self.identity, "scopes": sorted(self.scopes)}


def check_identity(identity: str) -> str:
    if (
        not isinstance(identity, str)
        or not identity
        or identity != identity.strip()
        or len(identity) > MAX_IDENTITY
        or not identity.isprintable()
    ):
        raise PolicyError(f"invalid actor identity {identity!r}")
    return identity
