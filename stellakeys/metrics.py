"""Prometheus metrics of the key rotation runbook, for dashboards and the runbook's alerts.

The names, types and labels are the runbook's:

==========================================  =======  ==============================  =========
metric                                      type     labels                          source
==========================================  =======  ==============================  =========
``signer_key_age_days``                     gauge    ``key_id``, ``profile``,        store
                                                     ``algorithm``
``signer_keys_active_total``                gauge    ``profile``                     store
``signer_keys_revoked_total``               counter  (none)                          store
``signer_rotation_events_total``            counter  (none)                          audit log
``signer_verification_key_lookups_total``   counter  (none)                          facade
``signer_verification_failures_total``      counter  ``code``                        facade
==========================================  =======  ==============================  =========

Everything is read at scrape time by one custom collector, so the numbers are the store's and
not one process's: ``stellaops metrics serve`` reports revocations made by other processes,
and a restarted exporter does not start again from zero. The two counters that describe
durable history are derived from durable history (key history and the append-only audit log),
which keeps them monotonic, as Prometheus counters must be. Only verification leaves no record,
so ``signer_verification_key_lookups_total`` and ``signer_verification_failures_total`` (by
reason code, :class:`stellakeys.reasons.ReasonCode`) are counted in-process by the manager's
:class:`~stellakeys.verifier.Verifier`; Prometheus handles the reset when the process restarts.

Definitions (docs/metrics.md has the long form):

* an *active* key is a generated key (one this deployment can sign with) that was not revoked
  for compromise and is not revoked, as of now, in every anchor it belongs to -- the same rule
  ``rotation-warnings`` and signing use; its age counts from generation;
* ``signer_keys_revoked_total`` counts anchor memberships whose revocation is in effect (the
  sum of every anchor's ``revokedKeys``); revocations are never undone or postponed, so it
  only grows;
* ``signer_rotation_events_total`` counts keys added to an anchor after the anchor was created
  (runbook step 2, ``anchor add-key`` or ``rotate_key``); the keys an anchor is created with
  are not rotations;
* ``signer_verification_key_lookups_total`` counts verifications (each looks up the keys
  valid at the signing time) made through this process's manager.

Mount the registry in an application with :func:`make_wsgi_app` / :func:`make_asgi_app`, or
run ``stellaops metrics serve --port 9464``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client import make_asgi_app as _make_asgi_app
    from prometheus_client import make_wsgi_app as _make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"stellakeys.metrics needs prometheus_client: pip install 'stellakeys[metrics]' ({exc})"
    ) from exc

from stellakeys.anchors import KeyHistoryEntry, TrustAnchor
from stellakeys.audit import AuditQuery, EventType
from stellakeys.keys import KeyRecord

if TYPE_CHECKING:
    from stellakeys.manager import KeyManager

__all__ = [
    "KEY_AGE",
    "KEYS_ACTIVE",
    "KEYS_REVOKED",
    "FAILURES",
    "KEY_LOOKUPS",
    "ROTATION_EVENTS",
    "KeyManagerCollector",
    "MetricsSnapshot",
    "exposition",
    "make_asgi_app",
    "make_wsgi_app",
    "registry_for",
    "snapshot",
]

KEY_AGE = "signer_key_age_days"
KEYS_ACTIVE = "signer_keys_active_total"
KEYS_REVOKED = "signer_keys_revoked_total"
ROTATION_EVENTS = "signer_rotation_events_total"
KEY_LOOKUPS = "signer_verification_key_lookups_total"
FAILURES = "signer_verification_failures_total"

_HELP = {
    KEY_AGE: "Age of each active key in days",
    KEYS_ACTIVE: "Number of active keys per profile",
    KEYS_REVOKED: "Total revoked keys (anchor memberships whose revocation is in effect)",
    ROTATION_EVENTS: "Key rotation events (keys added to an existing trust anchor)",
    KEY_LOOKUPS: "Temporal key lookups (verifications) made by this process",
    FAILURES: "Failed verifications made by this process, by reason code",
}

_SECONDS_PER_DAY = 86400.0


@attrs.frozen
class KeyAge:
    key_id: str
    profile: str
    algorithm: str
    age_days: float


@attrs.frozen
class MetricsSnapshot:
    """The values of one scrape, as plain data (tests, ``stellaops metrics show --json``)."""

    at: datetime
    key_ages: tuple[KeyAge, ...]
    active_per_profile: Mapping[str, int]
    revoked: int
    rotation_events: int
    key_lookups: int
    #: Failed verifications by reason code (stellakeys.reasons), this process's.
    failures_by_code: Mapping[str, int] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            KEY_AGE: [attrs.asdict(k) for k in self.key_ages],
            KEYS_ACTIVE: dict(self.active_per_profile),
            KEYS_REVOKED: self.revoked,
            ROTATION_EVENTS: self.rotation_events,
            KEY_LOOKUPS: self.key_lookups,
            FAILURES: dict(self.failures_by_code),
        }


def _is_active(record: KeyRecord, history: Iterable[KeyHistoryEntry], now: datetime) -> bool:
    if record.key_store_uri is None:
        return False  # imported public key: someone else's to rotate, and it cannot sign
    entries = list(history)
    if any(e.compromised and e.is_revoked_at(now) for e in entries):
        return False
    return not (entries and all(e.is_revoked_at(now) for e in entries))


def _rotation_events(manager: KeyManager) -> int:
    """KEY_ADDED events for keys an anchor was not created with (one event per membership:
    a key joins an anchor once)."""
    initial: dict[Any, set[str]] = {}
    for event in manager.audit_events(AuditQuery(event_type=EventType.ANCHOR_CREATED)):
        keys = event.details.get("keyIds") or []
        initial[event.anchor_id] = {str(k) for k in keys}
    return sum(
        1
        for event in manager.audit_events(AuditQuery(event_type=EventType.KEY_ADDED))
        if event.key_id not in initial.get(event.anchor_id, set())
    )


@attrs.frozen
class _StoreView:
    """What a scrape needs from the store; re-read only when the store's change token moves."""

    keys: tuple[KeyRecord, ...]
    histories: Mapping[str, tuple[KeyHistoryEntry, ...]]
    anchors: tuple[TrustAnchor, ...]
    rotation_events: int


class KeyManagerCollector(Collector):
    """Reads a :class:`~stellakeys.manager.KeyManager` at scrape time.

    Structural data (keys, histories, the audit-derived rotation count) is cached until the
    store's change token moves, so an idle store costs one token read per scrape; ages and
    revocations in effect are recomputed every scrape because they depend on the time.
    """

    def __init__(self, manager: KeyManager) -> None:
        self.manager = manager
        self._lock = threading.Lock()
        self._token: object = object()
        self._view: _StoreView | None = None

    def _store_view(self) -> _StoreView:
        # Read the token before the data it guards (the Store port's rule).
        token = self.manager.store.change_token()
        with self._lock:
            if self._view is not None and token == self._token:
                return self._view
        with self.manager.store.read() as tx:
            keys = tuple(tx.list_keys())
            histories = {k.key_id: tuple(tx.history_of_key(k.key_id)) for k in keys}
            anchors = tuple(tx.list_anchors())
        view = _StoreView(keys, histories, anchors, _rotation_events(self.manager))
        with self._lock:
            self._view, self._token = view, token
        return view

    def snapshot(self, at: datetime | None = None) -> MetricsSnapshot:
        now = at or self.manager.clock.now()
        view = self._store_view()
        ages: list[KeyAge] = []
        # Every configured profile appears, with 0 when it has no active key: a dashboard or
        # alert then sees "none" instead of a missing series.
        active: dict[str, int] = dict.fromkeys(self.manager.config.profiles, 0)
        for record in view.keys:
            if not _is_active(record, view.histories.get(record.key_id, ()), now):
                continue
            profile = record.profile or ""
            active[profile] = active.get(profile, 0) + 1
            age = (now - record.created_at).total_seconds() / _SECONDS_PER_DAY
            ages.append(KeyAge(record.key_id, profile, record.algorithm, max(age, 0.0)))
        revoked = sum(1 for a in view.anchors for e in a.key_history if e.is_revoked_at(now))
        return MetricsSnapshot(
            at=now,
            key_ages=tuple(ages),
            active_per_profile=active,
            revoked=revoked,
            rotation_events=view.rotation_events,
            key_lookups=self.manager.verifier.verifications,
            failures_by_code={
                code.value: n for code, n in self.manager.verifier.failures_by_code().items()
            },
        )

    def describe(self) -> Iterable[Metric]:
        # Names only, so registering does not read the store (and name clashes are caught).
        return [
            GaugeMetricFamily(KEY_AGE, _HELP[KEY_AGE], labels=["key_id", "profile", "algorithm"]),
            GaugeMetricFamily(KEYS_ACTIVE, _HELP[KEYS_ACTIVE], labels=["profile"]),
            CounterMetricFamily(KEYS_REVOKED, _HELP[KEYS_REVOKED]),
            CounterMetricFamily(ROTATION_EVENTS, _HELP[ROTATION_EVENTS]),
            CounterMetricFamily(KEY_LOOKUPS, _HELP[KEY_LOOKUPS]),
            CounterMetricFamily(FAILURES, _HELP[FAILURES], labels=["code"]),
        ]

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        age = GaugeMetricFamily(KEY_AGE, _HELP[KEY_AGE], labels=["key_id", "profile", "algorithm"])
        for k in snap.key_ages:
            age.add_metric([k.key_id, k.profile, k.algorithm], k.age_days)
        yield age
        active = GaugeMetricFamily(KEYS_ACTIVE, _HELP[KEYS_ACTIVE], labels=["profile"])
        for profile, count in sorted(snap.active_per_profile.items()):
            active.add_metric([profile], count)
        yield active
        yield CounterMetricFamily(KEYS_REVOKED, _HELP[KEYS_REVOKED], value=snap.revoked)
        yield CounterMetricFamily(
            ROTATION_EVENTS, _HELP[ROTATION_EVENTS], value=snap.rotation_events
        )
        yield CounterMetricFamily(KEY_LOOKUPS, _HELP[KEY_LOOKUPS], value=snap.key_lookups)
        failures = CounterMetricFamily(FAILURES, _HELP[FAILURES], labels=["code"])
        for code, count in sorted(snap.failures_by_code.items()):
            failures.add_metric([code], count)
        yield failures


def registry_for(manager: KeyManager) -> CollectorRegistry:
    """A registry holding only this manager's metrics, for an application to expose.

    A separate registry (not prometheus_client's global ``REGISTRY``) so that two managers in
    one process do not collide, and so the app decides where the metrics are mounted. To add
    them to an existing registry instead: ``registry.register(KeyManagerCollector(manager))``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KeyManagerCollector(manager))
    return registry


def snapshot(manager: KeyManager, at: datetime | None = None) -> MetricsSnapshot:
    return KeyManagerCollector(manager).snapshot(at)


def exposition(manager: KeyManager) -> bytes:
    """The Prometheus text exposition format (0.0.4), as served on ``/metrics``."""
    data: bytes = generate_latest(registry_for(manager))
    return data


def make_wsgi_app(manager: KeyManager) -> Callable[..., Any]:
    """A WSGI app serving the manager's metrics (mount it under ``/metrics``)."""
    app: Callable[..., Any] = _make_wsgi_app(registry_for(manager))
    return app


def make_asgi_app(manager: KeyManager) -> Callable[..., Any]:
    """An ASGI app serving the manager's metrics (Starlette/FastAPI ``app.mount``)."""
    app: Callable[..., Any] = _make_asgi_app(registry_for(manager))
    return app
