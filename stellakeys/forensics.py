"""Forensics in a notebook: after an incident, which proofs did a key sign, and which of them
still verify?

* :func:`proofs_signed_by` answers the runbook's post-incident step 1 ("review all proofs
  signed with compromised key"): every proof whose signatures *cryptographically* verify with
  the key (the DSSE ``keyid`` is only a hint and is not trusted here), each verified at its
  own signing time -- trusted when an RFC 3161 token stored with the proof covers the
  signature, otherwise the time the store recorded (asserted).
* :func:`key_history`, :func:`audit_dataframe`, :func:`history_dataframe`: tables for pandas
  (the ``notebook`` extra), with a clear error naming the extra when pandas is missing.
* :func:`plot_timeline`: key validity windows per anchor, with proof signing times and
  revocations marked (compromise in its own style), on matplotlib (``notebook`` extra).
* HTML for Jupyter: :class:`~stellakeys.verification.VerificationResult`,
  :class:`~stellakeys.anchors.TrustAnchor` and :class:`~stellakeys.anchors.KeyHistoryEntry`
  have ``_repr_html_`` methods that call the renderers here. Every value is escaped with
  :func:`html.escape`: key ids, PURLs and reasons come from whoever made the proof.

pandas and matplotlib are imported inside the functions that need them, so importing this
module (and the ``_repr_html_`` methods) costs neither.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditEvent, AuditQuery
from stellakeys.forensics_proofs import (  # re-exported: moved in issue 16
    Findings,
    SignedProof,
    _pandas,
    _pyplot,
    proofs_signed_by,
)

# The HTML renderers live in the notebook module (the edge); re-exported here for callers of
# forensics.result_html / anchor_html / history_entry_html.
from stellakeys.notebook import (
    _HISTORY_HEADERS,
    _history_row,
    _table,
    anchor_html,
    history_entry_html,
    result_html,
)
from stellakeys.revocation import is_compromise
from stellakeys.verification import TimeSource

if TYPE_CHECKING:
    from stellakeys.manager import KeyManager


__all__ = [
    "Findings",
    "KeyHistory",
    "SignedProof",
    "anchor_html",
    "audit_dataframe",
    "history_dataframe",
    "history_entry_html",
    "key_history",
    "plot_timeline",
    "proofs_signed_by",
    "result_html",
    "timeline_data",
]

# --- key history and audit as tables ---------------------------------------------------------


@attrs.frozen
class KeyHistory:
    """Key history rows (one per key per anchor) with the anchor's pattern alongside."""

    entries: tuple[tuple[TrustAnchor, KeyHistoryEntry], ...]

    def __iter__(self) -> Iterator[tuple[TrustAnchor, KeyHistoryEntry]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "anchor_id": str(a.anchor_id),
                "purl_pattern": a.purl_pattern,
                "anchor_active": a.active,
                "key_id": e.key_id,
                "algorithm": e.algorithm,
                "fingerprint": e.fingerprint,
                "added_at": e.added_at,
                "revoked_at": e.revoked_at,
                "revoke_reason": e.revoke_reason,
                "expires_at": e.expires_at,
                "compromised": is_compromise(e.revoke_reason),
            }
            for a, e in self.entries
        ]

    def to_dataframe(self) -> Any:
        pd = _pandas()
        columns = [
            "anchor_id",
            "purl_pattern",
            "anchor_active",
            "key_id",
            "algorithm",
            "fingerprint",
            "added_at",
            "revoked_at",
            "revoke_reason",
            "expires_at",
            "compromised",
        ]
        frame = pd.DataFrame(self.rows(), columns=columns)
        for col in ("added_at", "revoked_at", "expires_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        return frame

    def _repr_html_(self) -> str:
        return _table(
            ["Anchor", "Pattern", *_HISTORY_HEADERS],
            [[a.anchor_id, a.purl_pattern, *_history_row(e)] for a, e in self.entries],
        )


def _anchors_of(source: KeyManager | Iterable[TrustAnchor]) -> list[TrustAnchor]:
    if isinstance(source, TrustAnchor):
        return [source]
    if hasattr(source, "list_anchors"):
        return list(source.list_anchors())
    return list(source)


def key_history(
    source: KeyManager | TrustAnchor | Iterable[TrustAnchor], key_id: str | None = None
) -> KeyHistory:
    """Every anchor membership (of ``key_id`` only, when given), anchors in creation order."""
    anchors = _anchors_of(source)  # type: ignore[arg-type]
    return KeyHistory(
        tuple(
            (a, e) for a in anchors for e in a.key_history if key_id is None or e.key_id == key_id
        )
    )


def history_dataframe(
    source: KeyManager | TrustAnchor | Iterable[TrustAnchor], key_id: str | None = None
) -> Any:
    """Key history as a pandas DataFrame (one row per key per anchor)."""
    return key_history(source, key_id).to_dataframe()


def audit_dataframe(
    source: KeyManager | Iterable[AuditEvent], query: AuditQuery | None = None
) -> Any:
    """The audit log (or ``query``'s matches) as a pandas DataFrame, one row per event, with
    ``details`` kept as a dict column and the hash chain columns included."""
    pd = _pandas()
    if hasattr(source, "audit_events"):
        events = source.audit_events(query)
    else:
        events = [e for e in source if query is None or query.matches(e)]
    columns = [
        "seq",
        "event_id",
        "event_type",
        "key_id",
        "anchor_id",
        "ceremony_id",
        "actor",
        "timestamp",
        "details",
        "prev_hash",
        "hash",
    ]
    rows = [
        {
            "seq": e.seq,
            "event_id": str(e.event_id),
            "event_type": e.event_type,
            "key_id": e.key_id,
            "anchor_id": str(e.anchor_id) if e.anchor_id is not None else None,
            "ceremony_id": e.ceremony_id,
            "actor": e.actor,
            "timestamp": e.timestamp,
            "details": dict(e.details),
            "prev_hash": e.prev_hash,
            "hash": e.hash,
        }
        for e in events
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


# --- timeline ----------------------------------------------------------------------------------


@attrs.frozen
class Window:
    """One key's validity window in one anchor (a row of the timeline)."""

    anchor_id: uuid.UUID
    purl_pattern: str
    key_id: str
    start: datetime
    end: datetime | None
    revoked_at: datetime | None
    revoke_reason: str | None

    @property
    def compromised(self) -> bool:
        # This anchor's record; verification also applies compromises from other anchors.
        return is_compromise(self.revoke_reason)

    @property
    def label(self) -> str:
        return f"{self.purl_pattern}  {self.key_id}"


@attrs.frozen
class ProofMark:
    """A proof's signing time on the row of the key (and anchor) that signed it."""

    row: int
    digest: str
    at: datetime
    source: TimeSource
    ok: bool


@attrs.frozen
class TimelineData:
    windows: tuple[Window, ...]
    marks: tuple[ProofMark, ...]
    now: datetime


def timeline_data(
    manager: KeyManager,
    findings: Iterable[SignedProof] | None = None,
    *,
    now: datetime | None = None,
) -> TimelineData:
    """The rows and marks :func:`plot_timeline` draws, as data. Proofs default to every
    stored proof; each is marked on the row of every key that signed it, in the anchor that
    applies to its artifact, at the time its verification used."""
    now = now or manager.clock.now()
    anchors = manager.list_anchors()
    windows = [
        Window(
            a.anchor_id,
            a.purl_pattern,
            e.key_id,
            e.added_at,
            e.ends_at,
            e.revoked_at,
            e.revoke_reason,
        )
        for a in anchors
        for e in a.key_history
    ]
    index = {(w.anchor_id, w.key_id): i for i, w in enumerate(windows)}
    if findings is None:
        findings = [p for k in manager.list_keys() for p in proofs_signed_by(manager, k.key_id)]
    marks: list[ProofMark] = []
    seen: set[tuple[int, str]] = set()
    for proof in findings:
        anchor_id = proof.result.anchor_id
        if anchor_id is None and proof.purl is not None:
            found = manager.find_anchor(proof.purl)
            anchor_id = found.anchor_id if found else None
        for signer in proof.signed_by:
            row = index.get((anchor_id, signer)) if anchor_id is not None else None
            if row is None or (row, proof.digest) in seen:
                continue
            seen.add((row, proof.digest))
            time = proof.result.time
            source = proof.result.time_source
            for kt in proof.result.key_times:
                if kt.key_id == signer:
                    time, source = kt.time.at, kt.time.source
            marks.append(ProofMark(row, proof.digest, time, source, proof.still_valid))
    return TimelineData(tuple(windows), tuple(marks), now)


def plot_timeline(
    manager: KeyManager,
    findings: Iterable[SignedProof] | None = None,
    *,
    now: datetime | None = None,
    ax: Any = None,
    title: str | None = "Key validity windows per trust anchor",
    since: datetime | None = None,
    until: datetime | None = None,
) -> Any:
    """Draw key validity windows per anchor (one row per key per anchor) with proof signing
    times and revocations marked; returns the matplotlib Axes.

    Windows are bars from ``addedAt`` to the end of validity (open windows run to ``now``).
    A revocation is a dashed grey tick; a compromise is a solid red line with an ``X`` and a
    hatched red bar after it. Proofs are dots (asserted time) or stars (trusted time), green
    when the proof still verifies and red when it does not. ``since``/``until`` zoom in (the
    hours around a compromise are easy to lose on a year-long axis).
    """
    plt = _pyplot()
    # matplotlib's date helpers are untyped; treat the module as Any rather than sprinkle
    # ignores over every call.
    mdates: Any = importlib.import_module("matplotlib.dates")

    data = timeline_data(manager, findings, now=now)
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 0.55 * max(len(data.windows), 2) + 1.5))
    for row, w in enumerate(data.windows):
        end = w.end or data.now
        start_num = mdates.date2num(w.start)
        ax.barh(
            row,
            max(mdates.date2num(end) - start_num, 0.0),
            left=start_num,
            height=0.5,
            color="#9ecae1",
            edgecolor="#3182bd",
        )
        if w.revoked_at is not None:
            x = mdates.date2num(w.revoked_at)
            if w.compromised:
                ax.barh(
                    row,
                    max(mdates.date2num(data.now) - x, 0.0),
                    left=x,
                    height=0.5,
                    color="none",
                    edgecolor="#cf222e",
                    hatch="///",
                )
                ax.plot([x, x], [row - 0.4, row + 0.4], color="#cf222e", linewidth=2.5)
                ax.plot(x, row, marker="X", color="#cf222e", markersize=11, linestyle="none")
            else:
                ax.plot(
                    [x, x], [row - 0.4, row + 0.4], color="#555555", linestyle="--", linewidth=1.5
                )
    for mark in data.marks:
        ax.plot(
            mdates.date2num(mark.at),
            mark.row,
            marker="*" if mark.source is TimeSource.TRUSTED else "o",
            markersize=12 if mark.source is TimeSource.TRUSTED else 7,
            color="#1a7f37" if mark.ok else "#cf222e",
            markeredgecolor="black",
            linestyle="none",
            zorder=5,  # above the revocation marks: a proof right before a theft stays visible
        )
    ax.set_yticks(range(len(data.windows)))
    ax.set_yticklabels([w.label for w in data.windows])
    ax.invert_yaxis()
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.axvline(mdates.date2num(data.now), color="#888888", linewidth=0.8, linestyle=":")
    if since is not None or until is not None:
        left, right = ax.get_xlim()
        ax.set_xlim(
            mdates.date2num(since) if since is not None else left,
            mdates.date2num(until) if until is not None else right,
        )
        if since is not None and until is not None and until - since < timedelta(days=3):
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    if title:
        ax.set_title(title)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(facecolor="#9ecae1", edgecolor="#3182bd", label="key valid"),
            Line2D([], [], color="#555555", linestyle="--", label="revoked"),
            Line2D([], [], color="#cf222e", marker="X", linewidth=2.5, label="compromised"),
            Line2D([], [], marker="o", color="#1a7f37", linestyle="none", label="proof valid"),
            Line2D([], [], marker="o", color="#cf222e", linestyle="none", label="proof invalid"),
            Line2D([], [], marker="*", color="#888888", linestyle="none", label="trusted time"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
    )
    return ax
