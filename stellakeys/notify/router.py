"""Channels from the runbook's ``notifier-config.yaml``, and the router that fans out to them.

.. code-block:: yaml

    notifications:
      smtp:                          # shared by every email channel (stellakeys' addition)
        host: smtp.example.com
        port: 587
        from: stellakeys@example.com
        starttls: true
        username: stellakeys
        password: ${SMTP_PASSWORD}
      ceremonies:
        enabled: true
        channels:
          - type: email
            recipients: "@approverGroup"
          - type: slack
            webhook: ${SLACK_CEREMONY_WEBHOOK}
            channel: "#key-ceremonies"
          - type: webhook            # generic JSON POST
            url: https://hooks.example.com/ceremonies
            headers: {Authorization: "Bearer ${HOOK_TOKEN}"}

``${NAME}`` is replaced by the environment variable NAME when the file is read. A channel that
uses a variable which is not set is disabled with a warning (a missing Slack URL must not stop
key operations); a malformed file is a ConfigError.

``recipients`` (a string or a list) decides who an e-mail channel writes to:

* ``@approverGroup``: the audience the runbook gives each event (eligible approvers when a
  ceremony is created, the remaining approvers after an approval, the initiator when the
  threshold is reached, the remaining approvers near expiry, initiator and approvers on expiry);
* ``@initiator``: the ceremony's initiator;
* ``@<group name>``: every member of that approver group in approvers.yaml;
* anything else: a literal address, always included.

Slack and generic webhooks post one message per event to their channel; they ignore
``recipients`` except that the generic body lists the audience.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from stellakeys.config import load_yaml
from stellakeys.errors import ConfigError
from stellakeys.notify.ports import Notification, Notifier
from stellakeys.notify.smtp import SmtpNotifier
from stellakeys.notify.webhook import WebhookNotifier

__all__ = ["Channel", "NotificationRouter", "expand_env", "load_router"]

_log = logging.getLogger(__name__)

AUDIENCE = "@approverGroup"
INITIATOR = "@initiator"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _UnsetVariableError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace each ``${NAME}``; raise _UnsetVariableError for a variable that is unset."""
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env or env[name] == "":
            raise _UnsetVariableError(name)
        return env[name]

    return _VAR.sub(sub, value)


def _expand_all(value: Any, environ: Mapping[str, str] | None) -> Any:
    if isinstance(value, str):
        return expand_env(value, environ)
    if isinstance(value, Mapping):
        return {k: _expand_all(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_all(v, environ) for v in value]
    return value


@attrs.frozen
class Channel:
    name: str
    notifier: Notifier
    #: Recipient specs (``@approverGroup``, ``@initiator``, ``@<group>``, addresses).
    recipients: tuple[str, ...] = (AUDIENCE,)


#: Resolves ``@<group name>`` to that group's members.
GroupResolver = Callable[[str], Sequence[str]]


class NotificationRouter:
    """A Notifier that delivers to every configured channel and never raises."""

    def __init__(
        self, channels: Sequence[Channel], resolve_group: GroupResolver | None = None
    ) -> None:
        self.channels = tuple(channels)
        self._resolve_group = resolve_group or (lambda _name: ())

    def with_groups(self, resolve_group: GroupResolver) -> NotificationRouter:
        return NotificationRouter(self.channels, resolve_group)

    def recipients_for(self, channel: Channel, notification: Notification) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for spec in channel.recipients:
            if spec == AUDIENCE:
                out.update(dict.fromkeys(notification.recipients))
            elif spec == INITIATOR:
                initiator = notification.details.get("initiator")
                if isinstance(initiator, str):
                    out[initiator] = None
            elif spec.startswith("@"):
                out.update(dict.fromkeys(self._resolve_group(spec[1:])))
            else:
                out[spec] = None
        return tuple(out)

    def notify(self, notification: Notification) -> None:
        for channel in self.channels:
            addressed = attrs.evolve(
                notification, recipients=self.recipients_for(channel, notification)
            )
            try:
                channel.notifier.notify(addressed)
            except Exception as exc:  # best effort by contract; see ports
                _log.warning(
                    "notification %s for %s via %s failed: %s: %s",
                    notification.kind.value,
                    notification.ceremony_id,
                    channel.name,
                    type(exc).__name__,
                    exc,
                )


def _recipients(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return (AUDIENCE,)
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and all(isinstance(r, str) for r in raw):
        return tuple(raw)
    raise ConfigError(f"{where}.recipients must be a string or a list of strings")


def _number(raw: object, where: str, default: float) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise ConfigError(f"{where} must be a positive number")
    return float(raw)


def _smtp(raw: Mapping[str, Any], where: str) -> SmtpNotifier:
    extra = sorted(
        set(raw)
        - {"host", "port", "from", "starttls", "ssl", "username", "password", "timeout"}
        - {"allowPlaintextAuth"}
    )
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(extra)}")
    port = raw.get("port", 25)
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{where}.port must be a TCP port")
    try:
        return SmtpNotifier(
            str(raw.get("host", "localhost")),
            port,
            sender=str(raw.get("from", "stellakeys@localhost")),
            starttls=bool(raw.get("starttls", False)),
            use_ssl=bool(raw.get("ssl", False)),
            username=str(raw["username"]) if raw.get("username") else None,
            password=str(raw["password"]) if raw.get("password") else None,
            timeout=_number(raw.get("timeout"), f"{where}.timeout", 10.0),
            allow_plaintext_auth=bool(raw.get("allowPlaintextAuth", False)),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _channel(
    raw: object,
    where: str,
    smtp_defaults: Mapping[str, Any],
    environ: Mapping[str, str] | None,
) -> Channel | None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping")
    kind = raw.get("type")
    allowed = {
        "email": {"type", "recipients", "smtp"},
        "slack": {"type", "webhook", "channel", "timeout"},
        "webhook": {"type", "url", "headers", "recipients", "timeout"},
    }
    if kind not in allowed:
        raise ConfigError(f"{where}.type must be email, slack or webhook")
    extra = sorted(set(raw) - allowed[kind])
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, extra))}")
    try:
        expanded: Mapping[str, Any] = _expand_all(dict(raw), environ)
        smtp_expanded: Mapping[str, Any] = (
            _expand_all(dict(smtp_defaults), environ) if kind == "email" else {}
        )
    except _UnsetVariableError as exc:
        _log.warning("%s (%s) disabled: environment variable %s is not set", where, kind, exc.name)
        return None
    if kind == "email":
        own = expanded.get("smtp") or {}
        if not isinstance(own, Mapping):
            raise ConfigError(f"{where}.smtp must be a mapping")
        notifier: Notifier = _smtp({**smtp_expanded, **own}, f"{where}.smtp")
        return Channel(f"email({notifier!r})", notifier, _recipients(raw.get("recipients"), where))
    url = expanded.get("webhook" if kind == "slack" else "url")
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where} needs {'webhook' if kind == 'slack' else 'url'}")
    headers = expanded.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f"{where}.headers must map names to strings")
    channel = expanded.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise ConfigError(f"{where}.channel must be a string")
    try:
        hook = WebhookNotifier(
            url,
            slack=kind == "slack",
            channel=channel,
            headers=headers,
            timeout=_number(raw.get("timeout"), f"{where}.timeout", 10.0),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Channel(repr(hook), hook, _recipients(raw.get("recipients"), where))


def router_from_dict(
    document: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> NotificationRouter | None:
    """The router for ``notifications.ceremonies`` of a document; None when not enabled."""
    section = (document or {}).get("notifications")
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ConfigError("notifications must be a mapping")
    ceremonies = section.get("ceremonies")
    if ceremonies is None:
        return None
    if not isinstance(ceremonies, Mapping):
        raise ConfigError("notifications.ceremonies must be a mapping")
    enabled = ceremonies.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("notifications.ceremonies.enabled must be true or false")
    if not enabled:
        return None
    smtp = section.get("smtp") or {}
    if not isinstance(smtp, Mapping):
        raise ConfigError("notifications.smtp must be a mapping")
    raw_channels = ceremonies.get("channels") or []
    if not isinstance(raw_channels, list):
        raise ConfigError("notifications.ceremonies.channels must be a list")
    channels = [
        c
        for i, raw in enumerate(raw_channels)
        if (c := _channel(raw, f"notifications.ceremonies.channels[{i}]", smtp, environ))
        is not None
    ]
    return NotificationRouter(channels)


def load_router(
    document: Mapping[str, Any] | None, home: Path, environ: Mapping[str, str] | None = None
) -> NotificationRouter | None:
    """From the signer configuration's ``notifications`` section, else from
    ``<home>/notifier-config.yaml`` if it exists."""
    if document and document.get("notifications") is not None:
        return router_from_dict(document, environ)
    path = home / "notifier-config.yaml"
    if not path.exists():
        return None
    from stellakeys.config_schema import validate_config

    loaded = load_yaml(path)
    validate_config(loaded, path, "notifier")
    if loaded is None:
        return None
    try:
        return router_from_dict(loaded, environ)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
