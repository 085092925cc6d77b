"""E-mail notifications over SMTP (``smtplib``), one message per notification."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from stellakeys.notify.ports import Notification

__all__ = ["SmtpNotifier"]


class SmtpNotifier:
    """Sends each notification as one e-mail to its recipients that look like addresses.

    ``starttls`` upgrades a plain connection (port 587); ``use_ssl`` connects with TLS from the
    start (port 465). Credentials, when given, are sent only over TLS unless
    ``allow_plaintext_auth`` is set (for a local relay in tests).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 25,
        *,
        sender: str = "stellakeys@localhost",
        starttls: bool = False,
        use_ssl: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        allow_plaintext_auth: bool = False,
    ) -> None:
        if username is not None and not (starttls or use_ssl or allow_plaintext_auth):
            raise ValueError("SMTP credentials need starttls or use_ssl")
        self.host = host
        self.port = port
        self.sender = sender
        self.starttls = starttls
        self.use_ssl = use_ssl
        self.username = username
        self._password = password
        self.timeout = timeout

    def __repr__(self) -> str:  # never the password
        return f"SmtpNotifier({self.host}:{self.port}, sender={self.sender!r})"

    def message(self, notification: Notification, recipients: list[str]) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = f"[stellakeys] {notification.title}"
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        msg["X-Stellakeys-Event"] = notification.kind.value
        msg["X-Stellakeys-Ceremony"] = notification.ceremony_id
        msg.set_content(notification.text)
        return msg

    def notify(self, notification: Notification) -> None:
        recipients = [r for r in notification.recipients if "@" in r and "\n" not in r]
        if not recipients:
            return
        msg = self.message(notification, recipients)
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.use_ssl:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            if self.starttls and not self.use_ssl:
                smtp.starttls(context=context)
            if self.username is not None:
                smtp.login(self.username, self._password or "")
            smtp.send_message(msg, from_addr=self.sender, to_addrs=recipients)
