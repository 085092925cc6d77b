"""Notifications behind the :class:`Notifier` port: SMTP e-mail and (Slack) webhooks.

>>> from stellakeys.notify import NotificationRouter, load_router
"""

from stellakeys.notify.ports import Notification, NotificationKind, Notifier
from stellakeys.notify.router import Channel, NotificationRouter, load_router, router_from_dict
from stellakeys.notify.smtp import SmtpNotifier
from stellakeys.notify.webhook import WebhookNotifier

__all__ = [
    "Channel",
    "Notification",
    "NotificationKind",
    "NotificationRouter",
    "Notifier",
    "SmtpNotifier",
    "WebhookNotifier",
    "load_router",
    "router_from_dict",
]
