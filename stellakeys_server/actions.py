"""Every call the service makes into the library, in one place (the adapter the lead adapts
when the facade changes). Each function takes plain values and returns JSON-ready values,
the same calls and the same shapes as the CLI.

The audit log must name the caller (the token's identity), and the facade writes its own
``actor`` into every event. So each identity gets its own :class:`KeyManager` and
:class:`CeremonyService`, all sharing one store (the stores are thread-safe), built lazily and
kept for the life of the process; nothing per-request is ever set on a shared object.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any

from stellakeys.audit import AuditQuery, AuditRecord
from stellakeys.ceremony.actor import Actor
from stellakeys.ceremony.model import states_of
from stellakeys.ceremony.service import CeremonyService
from stellakeys.clock import Clock
from stellakeys.config import Settings
from stellakeys.crypto import load_public_key_pem
from stellakeys.dsse import Envelope
from stellakeys.errors import ConflictError, NotFoundError
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.manager import KeyManager
from stellakeys.times import format_time

__all__ = ["EVENT_BREAK_GLASS", "EVENT_UNAUTHORIZED", "Library"]

#: The runbook's alert ``ceremony.unauthorized_access``: every 401/403 of the API.
EVENT_UNAUTHORIZED = "signer.ceremony.unauthorized_access"
#: Every request made with break-glass credentials.
EVENT_BREAK_GLASS = "signer.breakglass.used"


class Library:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        #: The process's own manager: verification, reads, metrics and the service's events.
        self.base = KeyManager.from_settings(settings, clock=clock)
        self._lock = threading.Lock()
        self._per_actor: dict[str, tuple[KeyManager, CeremonyService]] = {}

    def close(self) -> None:
        with self._lock:
            for manager, _ in self._per_actor.values():
                # Built with owns_store=False: this closes only the manager's key stores.
                manager.close()
            self._per_actor.clear()
        self.base.close()

    def _for(self, identity: str) -> tuple[KeyManager, CeremonyService]:
        with self._lock:
            found = self._per_actor.get(identity)
            if found is None:
                manager = KeyManager(
                    self.base.store,
                    config=self.base.config,
                    clock=self.clock,
                    actor=identity,
                    keystore_context=KeyStoreContext(home=self.settings.home),
                    # One authorizer for every identity: the ceremonies section, approvers
                    # and the store's policy, as composed from the settings.
                    authorizer=self.base.authorizer,
                    settings=self.settings,
                    # The store is the base manager's, closed once by close().
                    owns_store=False,
                )
                service = CeremonyService.from_settings(manager, self.settings)
                found = (manager, service)
                self._per_actor[identity] = found
            return found

    def now(self) -> datetime:
        return self.clock.now()

    # --- events the service itself writes --------------------------------------------------

    def record_event(self, event_type: str, actor: str, details: dict[str, Any]) -> None:
        with self.base.store.transaction() as tx:
            tx.append_audit(
                AuditRecord(
                    event_type=event_type, actor=actor, timestamp=self.now(), details=details
                )
            )

    # --- keys and anchors ------------------------------------------------------------------

    def generate_key(
        self, identity: str, key_id: str, profile: str, algorithm: str | None
    ) -> dict[str, Any]:
        manager, _ = self._for(identity)
        return manager.generate_key(key_id, profile, algorithm).to_dict()

    def add_key(
        self, identity: str, anchor_id: str, key_id: str, public_key: str | None
    ) -> dict[str, Any]:
        manager, _ = self._for(identity)
        if public_key:
            try:
                existing = manager.get_key(key_id)
            except NotFoundError:
                manager.import_key(key_id, public_key)
            else:
                given = load_public_key_pem(public_key).fingerprint
                if given != existing.fingerprint:
                    raise ConflictError(
                        f"key {key_id} exists with another public key ({existing.fingerprint})"
                    )
        changed = manager.add_key(anchor_id, key_id)
        return {"keyid": key_id, "anchorIds": [str(a) for a in changed]}

    def revoke_key(
        self,
        identity: str,
        anchor_id: str,
        key_id: str,
        reason: str,
        effective_at: datetime | None,
    ) -> dict[str, Any]:
        manager, _ = self._for(identity)
        changed = manager.revoke_key(anchor_id, key_id, reason, effective_at)
        return {
            "keyid": key_id,
            "anchorIds": [str(a) for a in changed],
            "reason": reason,
            "effectiveAt": format_time(effective_at or self.now()),
        }

    def list_keys(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.base.list_keys()]

    def get_key(self, key_id: str) -> dict[str, Any]:
        return self.base.get_key(key_id).to_dict()

    def list_anchors(self) -> list[dict[str, Any]]:
        now = self.now()
        return [a.to_dict(now) for a in self.base.list_anchors()]

    def get_anchor(self, anchor_id: str) -> dict[str, Any]:
        return self.base.get_anchor(anchor_id).to_dict(self.now())

    # --- verification and audit ------------------------------------------------------------

    def verify(self, proof: str | bytes, purl: str | None, at: datetime | None) -> dict[str, Any]:
        """As ``stellaops verify --json``: stored tokens come with a stored proof."""
        m = self.base
        tokens: list[bytes] = []
        if isinstance(proof, bytes):
            envelope = Envelope.from_json(proof)
            tokens = list(m.proof_timestamps(envelope.digest()))
            result = m.verify(envelope, purl=purl, at=at, timestamps=tokens)
        else:
            result = m.verify(proof, purl=purl, at=at)
        return result.to_dict()

    def audit_query(
        self,
        event_type: str | None,
        since: datetime | None,
        until: datetime | None,
        key_id: str | None,
        anchor_id: str | None,
        ceremony_id: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        aid = uuid.UUID(anchor_id) if anchor_id else None
        events = self.base.audit_events(
            AuditQuery(
                event_type=event_type,
                since=since,
                until=until,
                key_id=key_id,
                anchor_id=aid,
                ceremony_id=ceremony_id,
            )
        )
        events.reverse()  # newest first, as `stellaops audit query`
        return [e.to_dict() for e in events[:limit]]

    def metrics(self) -> Any:
        from stellakeys.metrics import registry_for

        return registry_for(self.base)

    # --- ceremonies ------------------------------------------------------------------------

    @staticmethod
    def _actor(identity: str, scopes: frozenset[str]) -> Actor:
        # Scopes come from the token, never from approvers.yaml or the request.
        return Actor(identity, scopes)

    def ceremony_create(
        self,
        identity: str,
        scopes: frozenset[str],
        ceremony_type: str,
        subject: str,
        payload: dict[str, Any],
        threshold: int | None,
        required_approvers: int | None,
        expires_at: datetime | None,
    ) -> dict[str, Any]:
        _, svc = self._for(identity)
        created = svc.create(
            self._actor(identity, scopes),
            ceremony_type,
            subject,
            payload,
            threshold=threshold,
            required_approvers=required_approvers,
            expires_at=expires_at,
        )
        return created.create_response()

    def ceremony_list(self, states: list[str] | None) -> list[dict[str, Any]]:
        _, svc = self._for(self.base.actor)
        wanted = states_of(states) if states else None
        return [c.to_dict() for c in svc.list(wanted)]

    def ceremony_get(self, ceremony_id: str) -> dict[str, Any]:
        _, svc = self._for(self.base.actor)
        return svc.get(ceremony_id).to_dict()

    def ceremony_statement(self, identity: str, ceremony_id: str, reason: str) -> dict[str, Any]:
        from stellakeys.ceremony.model import Decision
        from stellakeys.ceremony.statement import PAYLOAD_TYPE

        _, svc = self._for(identity)
        statement = svc.statement(ceremony_id, identity, Decision.APPROVE, reason)
        return {
            "payloadType": PAYLOAD_TYPE,
            "payload": statement.to_json().decode("utf-8"),
        }

    def ceremony_approve(
        self,
        identity: str,
        scopes: frozenset[str],
        ceremony_id: str,
        envelope: Envelope | None,
        reason: str,
    ) -> dict[str, Any]:
        _, svc = self._for(identity)
        updated, approval = svc.approve(
            self._actor(identity, scopes), ceremony_id, envelope, reason=reason
        )
        return updated.approval_response(approval)

    def ceremony_execute(
        self, identity: str, scopes: frozenset[str], ceremony_id: str
    ) -> dict[str, Any]:
        _, svc = self._for(identity)
        return svc.execute(self._actor(identity, scopes), ceremony_id).execution_response()

    def ceremony_cancel(
        self, identity: str, scopes: frozenset[str], ceremony_id: str, reason: str
    ) -> dict[str, Any]:
        _, svc = self._for(identity)
        done = svc.cancel(self._actor(identity, scopes), ceremony_id, reason)
        return {
            "ceremonyId": done.ceremony_id,
            "state": done.state.value,
            "cancelledAt": format_time(done.cancelled_at) if done.cancelled_at else None,
            "cancelReason": done.cancel_reason,
        }
