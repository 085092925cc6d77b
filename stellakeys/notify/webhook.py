"""Webhook notifications: a JSON POST, Slack-compatible or generic (``urllib.request``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from stellakeys.notify.ports import Notification

__all__ = ["WebhookNotifier"]


class WebhookNotifier:
    """POSTs each notification as JSON.

    ``slack=True`` sends Slack's incoming-webhook body, ``{"text": ..., "channel": ...}``
    (``channel`` only when configured); otherwise the body is :meth:`Notification.to_dict`
    with the same ``text`` field, so chat tools that read ``text`` still show something.

    The URL of a Slack webhook is itself a credential, so it never appears in a message, a
    log line or ``repr``: only its host does.
    """

    def __init__(
        self,
        url: str,
        *,
        slack: bool = False,
        channel: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("a webhook URL must be http:// or https:// with a host")
        self._url = url
        self.host = parsed.hostname
        self.slack = slack
        self.channel = channel
        self._headers = dict(headers or {})
        self.timeout = timeout

    def __repr__(self) -> str:
        kind = "slack" if self.slack else "webhook"
        return f"WebhookNotifier({kind} to {self.host})"

    def body(self, notification: Notification) -> dict[str, object]:
        text = f"*{notification.title}*\n{notification.text}"
        if self.slack:
            out: dict[str, object] = {"text": text}
            if self.channel:
                out["channel"] = self.channel
            return out
        return {**notification.to_dict(), "text": text}

    def notify(self, notification: Notification) -> None:
        data = json.dumps(self.body(notification), ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self._url,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "stellakeys-notifier",
                **self._headers,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read(1024)
        except urllib.error.HTTPError as exc:
            # Re-raise without the URL (HTTPError's text carries it).
            raise OSError(f"webhook at {self.host} answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise OSError(f"webhook at {self.host} unreachable: {exc.reason}") from None
