"""The Notifier port: tell people that a ceremony needs them (or is over).

A notification is addressed to identities (the runbook's approvers and initiators are e-mail
addresses); each channel adapter delivers it its own way: an e-mail to each address, one
message to a Slack channel or webhook. Delivery is best effort by contract: a notifier may
raise, and the caller (the ceremony service, through :class:`~stellakeys.notify.router.
NotificationRouter`) logs the failure and carries on, because a mail server being down must
never block or undo a ceremony step that has already committed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs

__all__ = ["Notification", "NotificationKind", "Notifier"]


class NotificationKind(enum.Enum):
    """The runbook's notification table, one member per row."""

    CREATED = "ceremony.created"  # to all eligible approvers
    APPROVAL_SUBMITTED = "ceremony.approval_submitted"  # to remaining approvers
    THRESHOLD_REACHED = "ceremony.threshold_reached"  # to the initiator
    EXPIRY_WARNING = "ceremony.expiry_warning"  # at 75% and 90% of the timeout
    EXPIRED = "ceremony.expired"  # to the initiator and approvers


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class Notification:
    kind: NotificationKind
    ceremony_id: str
    #: One line: an e-mail subject, the bold first line of a chat message.
    title: str
    #: Plain text body. Never contains key material or secrets, only ceremony facts.
    text: str
    #: The identities this event is for (the runbook's audience for it). Channels configured
    #: with ``@approverGroup`` deliver to these.
    recipients: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Ceremony facts for machine consumers (webhooks): type, state, counts, times.
    details: Mapping[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.kind.value,
            "ceremonyId": self.ceremony_id,
            "title": self.title,
            "text": self.text,
            "recipients": list(self.recipients),
            "details": dict(self.details),
        }


class Notifier(Protocol):
    def notify(self, notification: Notification) -> None:
        """Deliver ``notification``; raise on failure (the router logs and continues)."""
        ...
