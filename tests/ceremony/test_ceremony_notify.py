"""Notifier adapters against real local servers: SMTP (aiosmtpd) and HTTP (http.server)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ceremony_support import HttpSink, SmtpSink

from stellakeys.errors import ConfigError
from stellakeys.notify import (
    Notification,
    NotificationKind,
    SmtpNotifier,
    WebhookNotifier,
    load_router,
    router_from_dict,
)
from stellakeys.notify.router import Channel, NotificationRouter, expand_env


def note(recipients: tuple[str, ...] = ("a@example.com", "b@example.com")) -> Notification:
    return Notification(
        NotificationKind.CREATED,
        "cer-0123456789abcdef",
        "Approval requested: key-rotation",
        "Ceremony: cer-0123456789abcdef\n",
        recipients,
        {"initiator": "admin@example.com", "ceremonyType": "key-rotation"},
    )


def test_smtp_delivers_one_message_to_the_recipients(smtp_server: SmtpSink) -> None:
    SmtpNotifier("127.0.0.1", smtp_server.port, sender="signer@example.com").notify(note())
    [(rcpts, msg)] = smtp_server.wait(1)
    assert rcpts == ["a@example.com", "b@example.com"]
    assert msg["Subject"] == "[stellakeys] Approval requested: key-rotation"
    assert msg["From"] == "signer@example.com"
    assert msg["X-Stellakeys-Ceremony"] == "cer-0123456789abcdef"
    assert "Ceremony: cer-0123456789abcdef" in msg.get_content()


def test_smtp_skips_identities_that_are_not_addresses(smtp_server: SmtpSink) -> None:
    SmtpNotifier("127.0.0.1", smtp_server.port).notify(note(("svc-account",)))
    assert smtp_server.wait(1, timeout=0.3) == []


def test_slack_webhook_body(http_server: HttpSink) -> None:
    hook = WebhookNotifier(
        http_server.url + "/T000/B000/XXX", slack=True, channel="#key-ceremonies"
    )
    hook.notify(note())
    [req] = http_server.wait(1)
    assert req["path"] == "/T000/B000/XXX"
    assert req["json"] == {
        "text": "*Approval requested: key-rotation*\nCeremony: cer-0123456789abcdef\n",
        "channel": "#key-ceremonies",
    }
    assert "XXX" not in repr(hook)  # the URL is a credential


def test_generic_webhook_body_and_headers(http_server: HttpSink) -> None:
    WebhookNotifier(http_server.url + "/hook", headers={"Authorization": "Bearer t"}).notify(note())
    [req] = http_server.wait(1)
    assert req["headers"]["Authorization"] == "Bearer t"
    body = req["json"]
    assert body["event"] == "ceremony.created"
    assert body["ceremonyId"] == "cer-0123456789abcdef"
    assert body["recipients"] == ["a@example.com", "b@example.com"]


def test_webhook_errors_do_not_leak_the_url(http_server: HttpSink) -> None:
    http_server.status = 500
    with pytest.raises(OSError) as exc:
        WebhookNotifier(http_server.url + "/secret-token").notify(note())
    assert "secret-token" not in str(exc.value)
    assert "HTTP 500" in str(exc.value)


def test_router_from_the_runbooks_file_shape(
    tmp_path: Path,
    smtp_server: SmtpSink,
    http_server: HttpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLACK_CEREMONY_WEBHOOK", http_server.url + "/slack")
    (tmp_path / "notifier-config.yaml").write_text(
        f"""
notifications:
  smtp:
    host: 127.0.0.1
    port: {smtp_server.port}
    from: signer@example.com
  ceremonies:
    enabled: true
    channels:
      - type: email
        recipients: "@approverGroup"
      - type: slack
        webhook: ${{SLACK_CEREMONY_WEBHOOK}}
        channel: "#key-ceremonies"
      - type: email
        recipients: ["@initiator", "@trust-admins", "audit@example.com"]
"""
    )
    router = load_router({}, tmp_path)
    assert router is not None
    router = router.with_groups(lambda g: ["t1@example.com"] if g == "trust-admins" else [])
    router.notify(note())
    mails = smtp_server.wait(2)
    assert sorted(tuple(r) for r, _ in mails) == [
        ("a@example.com", "b@example.com"),
        ("admin@example.com", "t1@example.com", "audit@example.com"),
    ]
    [slack] = http_server.wait(1)
    assert slack["path"] == "/slack" and slack["json"]["channel"] == "#key-ceremonies"


def test_unset_variable_disables_only_that_channel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SLACK_CEREMONY_WEBHOOK", raising=False)
    doc = {
        "notifications": {
            "ceremonies": {
                "channels": [
                    {"type": "slack", "webhook": "${SLACK_CEREMONY_WEBHOOK}"},
                    {"type": "email"},
                ]
            }
        }
    }
    with caplog.at_level(logging.WARNING):
        router = router_from_dict(doc)
    assert router is not None and len(router.channels) == 1
    assert "SLACK_CEREMONY_WEBHOOK is not set" in caplog.text


def test_failures_are_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def notify(self, notification: Notification) -> None:
            raise ConnectionRefusedError("nobody home")

    router = NotificationRouter([Channel("broken", Broken())])
    with caplog.at_level(logging.WARNING):
        router.notify(note())
    assert "nobody home" in caplog.text


def test_config_errors() -> None:
    assert router_from_dict({}) is None
    assert router_from_dict({"notifications": {"ceremonies": {"enabled": False}}}) is None
    for bad in (
        {"notifications": {"ceremonies": {"channels": [{"type": "pager"}]}}},
        {"notifications": {"ceremonies": {"channels": [{"type": "slack"}]}}},
        {
            "notifications": {
                "ceremonies": {"channels": [{"type": "slack", "webhook": "file:///x"}]}
            }
        },
        {"notifications": {"ceremonies": {"channels": "email"}}},
        {"notifications": {"smtp": {"port": "x"}, "ceremonies": {"channels": [{"type": "email"}]}}},
    ):
        with pytest.raises(ConfigError):
            router_from_dict(bad)
    assert expand_env("a${X}b", {"X": "1"}) == "a1b"
