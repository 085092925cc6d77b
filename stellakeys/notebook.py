"""Presentation for notebooks: HTML renderings of results, anchors and key history.

The edge of the library: the core's value classes (:class:`~stellakeys.verification.
VerificationResult`, :class:`~stellakeys.anchors.TrustAnchor`, :class:`~stellakeys.anchors.
KeyHistoryEntry`) do not import this module; importing it registers these renderers for their
``_repr_html_`` (``stellakeys._display``), and :mod:`stellakeys.forensics` imports it. Every
value is HTML-escaped: key ids and predicate types are free text. Nothing here reads a clock:
``anchor_html`` splits allowed from revoked keys only at a time the caller gives.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime

from stellakeys._display import register_html
from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.times import format_time
from stellakeys.verification import VerificationResult

__all__ = ["anchor_html", "history_entry_html", "load_ipython_extension", "result_html"]


def _t(value: datetime | None) -> str:
    return format_time(value) if value is not None else ""


# --- HTML -------------------------------------------------------------------------------------

_STYLE_OK = "color:#1a7f37;font-weight:bold"
_STYLE_FAIL = "color:#cf222e;font-weight:bold"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fields(rows: Iterable[tuple[str, object]]) -> str:
    body = "".join(
        f"<tr><th style='text-align:left'>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def result_html(result: VerificationResult) -> str:
    """A verification result: verdict, artifact, anchor, keys with their times, reasons."""
    verdict = (
        f"<span style='{_STYLE_OK}'>OK</span>"
        if result.ok
        else f"<span style='{_STYLE_FAIL}'>FAILED</span>"
    )
    times = {kt.key_id: kt.time for kt in result.key_times}
    keys = [
        (
            k.key_id,
            k.algorithm,
            k.fingerprint,
            _t(times[k.key_id].at) if k.key_id in times else _t(result.time),
            (times[k.key_id].source if k.key_id in times else result.time_source).value,
        )
        for k in result.verified_keys
    ]
    parts = [
        f"<div><b>Verification</b> {verdict} <code>{_e(result.envelope_digest)}</code></div>",
        _fields(
            [
                ("Artifact", result.purl or "-"),
                ("Predicate type", result.predicate_type or "-"),
                (
                    "Anchor",
                    f"{result.anchor_id} ({result.anchor_pattern}, {result.policy_version})"
                    if result.anchor_id
                    else "-",
                ),
                ("Time", f"{_t(result.time)} ({result.time_source.value})"),
            ]
        ),
    ]
    if keys:
        parts.append(_table(["Key", "Algorithm", "Fingerprint", "Time", "Source"], keys))
    if result.reasons:
        items = "".join(f"<li>{_e(r)}</li>" for r in result.reasons)
        parts.append(f"<div>Reasons:<ul>{items}</ul></div>")
    if result.notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in result.notes)
        parts.append(f"<div>Notes:<ul>{items}</ul></div>")
    return "<div class='stellakeys-result'>" + "".join(parts) + "</div>"


_HISTORY_HEADERS = ["Key", "Algorithm", "Added", "Revoked", "Reason", "Expires", "Fingerprint"]


def _history_row(e: KeyHistoryEntry) -> list[object]:
    return [
        e.key_id,
        e.algorithm,
        _t(e.added_at),
        _t(e.revoked_at),
        e.revoke_reason or "",
        _t(e.expires_at),
        e.fingerprint,
    ]


def history_entry_html(entry: KeyHistoryEntry) -> str:
    return _table(["Anchor", *_HISTORY_HEADERS], [[entry.anchor_id, *_history_row(entry)]])


def anchor_html(anchor: TrustAnchor, at: datetime | None = None) -> str:
    """A trust anchor with its key history. With ``at`` (the caller's time: a clock it owns,
    or the moment in question), the allowed and revoked keys at that time; without it, the
    history alone (no clock is read here)."""
    status = "active" if anchor.active else "inactive"
    rows: list[tuple[str, object]] = [
        ("Trust anchor", anchor.anchor_id),
        ("PURL pattern", anchor.purl_pattern),
        ("Status", status),
        ("Policy version", anchor.policy_version),
        ("Predicate types", ", ".join(anchor.allowed_predicate_types) or "(none)"),
    ]
    if at is not None:
        rows.append((f"Allowed keys at {_t(at)}", ", ".join(anchor.allowed_keyids(at)) or "-"))
        rows.append((f"Revoked keys at {_t(at)}", ", ".join(anchor.revoked_keys(at)) or "-"))
    head = _fields(rows)
    history = _table(_HISTORY_HEADERS, [_history_row(e) for e in anchor.key_history])
    return f"<div class='stellakeys-anchor'>{head}<div>Key history</div>{history}</div>"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext stellakeys.notebook``: importing the module is all it takes."""


register_html(VerificationResult, result_html)
register_html(TrustAnchor, anchor_html)
register_html(KeyHistoryEntry, history_entry_html)
