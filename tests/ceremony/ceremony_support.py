"""Helpers shared by the ceremony tests (imported by name: tests/ceremony is on sys.path)."""

from __future__ import annotations

import email
import email.message
import email.policy
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stellakeys.audit import AuditEvent, AuditQuery
from stellakeys.ceremony.actor import Actor
from stellakeys.ceremony.approvers import ApproverRegistry
from stellakeys.ceremony.authorization import ApproverSource, CeremonyAuthorizer
from stellakeys.ceremony.config import CeremonyConfig
from stellakeys.ceremony.model import Approval, Ceremony, Decision
from stellakeys.ceremony.service import CeremonyService
from stellakeys.ceremony.statement import ApprovalStatement
from stellakeys.clock import FrozenClock
from stellakeys.crypto import Algorithm, PrivateKey, PublicKey, get_algorithm
from stellakeys.dsse import Envelope
from stellakeys.keystores.ports import KeyStoreContext
from stellakeys.manager import KeyManager
from stellakeys.notify.ports import Notifier
from stellakeys.profiles import KeyProfile, SignerConfig
from stellakeys.storage.ports import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """Messages received by a local aiosmtpd server."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self._lock = threading.Lock()
        self.host = "127.0.0.1"
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), msg))
        return "250 OK"

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[list[str], Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            return list(self.messages)


class HttpSink:
    """JSON bodies POSTed to a local HTTP server, with their paths and headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.status = 200
        self.url = ""

    def wait(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.02)
        with self.lock:
            return list(self.requests)


# --- a world: KeyManager + CeremonyService + approvers with keys ----------------------------


T0 = datetime(2026, 1, 16, 10, 0, tzinfo=UTC)
INITIATOR = "admin@company.com"
LEAD = "security-lead@company.com"
CISO = "ciso@company.com"
OFFICER_1 = "key-officer-1@company.com"
OFFICER_2 = "key-officer-2@company.com"
OFFICER_3 = "key-officer-3@company.com"
TRUST_ADMIN = "trust-admin@company.com"
OUTSIDER = "auditor@company.com"  # has a key, in no group
SUSPENDED = "suspended@company.com"  # in the custodians group, scopes: []
CUSTODIANS = (LEAD, CISO, OFFICER_1, OFFICER_2, OFFICER_3)


def approvers_document(keys: dict[str, PublicKey], *, initiator_in_group: bool = False) -> dict:
    custodians = [*CUSTODIANS, SUSPENDED] + ([INITIATOR] if initiator_in_group else [])
    approvers: dict[str, dict[str, Any]] = {
        who: {"keys": [{"keyId": f"{who.split('@')[0]}-key", "publicKey": k.to_pem()}]}
        for who, k in keys.items()
    }
    approvers[LEAD]["scopes"] = ["ceremony:approve", "ceremony:cancel"]
    if SUSPENDED in approvers:
        approvers[SUSPENDED]["scopes"] = []
    return {
        "approverGroups": [
            {
                "name": "key-custodians",
                "members": custodians,
                "operations": [
                    "key-rotation",
                    "key-revocation",
                    "hsm-key-generation",
                    "recovery-key-activation",
                ],
            },
            {
                "name": "trust-admins",
                "members": [TRUST_ADMIN, LEAD, CISO],
                "operations": ["trust-anchor-update"],
            },
        ],
        "approvers": approvers,
    }


class MemoryKeyStore:
    """An in-process implementation of the KeyStore port (keys in a dict), for tests that
    exercise ceremonies rather than key stores. One instance is shared per URI scheme."""

    def __init__(self, scheme: str = "memks") -> None:
        self.scheme = scheme
        self.keys: dict[str, PrivateKey] = {}
        self.lock = threading.Lock()
        self.generated = 0

    def generate(self, algorithm: Algorithm, key_id: str) -> Any:
        key = algorithm.generate()
        uri = f"{self.scheme}://test/{key_id}#{key.public_key().fingerprint}"
        with self.lock:
            self.keys[uri] = key
            self.generated += 1
        return _Handle(uri, key)

    def open(self, uri: str) -> Any:
        with self.lock:
            return _Handle(uri, self.keys[uri])

    def close(self) -> None:
        pass


@dataclass
class _Handle:
    uri: str
    key: PrivateKey

    def sign(self, data: bytes, /) -> bytes:
        return self.key.sign(data)

    def public_key(self) -> PublicKey:
        return self.key.public_key()


PROFILES = SignerConfig(
    {
        "default": KeyProfile("default", "ed25519", "memks://default"),
        "root": KeyProfile("root", "ecdsa-p384-sha384", "memks://root"),
        "hsm": KeyProfile("hsm", "ecdsa-p256-sha256", "hsm://pkcs11/slot/0"),
    }
)


#: Builds a facade and its ceremony service from a ceremony configuration and approvers.
Composer = Callable[[CeremonyConfig, ApproverSource], tuple[KeyManager, CeremonyService]]


@dataclass
class World:
    manager: KeyManager
    service: CeremonyService
    clock: FrozenClock
    keys: dict[str, PrivateKey]
    keystore: MemoryKeyStore
    sent: list[Any] = field(default_factory=list)
    #: Builds a facade and its service over the same store, clock and key stores from a
    #: ceremony configuration and approvers (what another process would compose).
    compose: (
        Callable[[CeremonyConfig, ApproverSource], tuple[KeyManager, CeremonyService]] | None
    ) = None

    def reconfigure(
        self, config: CeremonyConfig | None = None, approvers: ApproverSource = None
    ) -> None:
        """Go on as a process composed with another ceremony configuration and/or approvers
        (library objects are never changed after construction: a new facade and service are
        built over the same store)."""
        assert self.compose is not None
        authorizer = self.service.authorizer
        config = config if config is not None else authorizer.config
        if approvers is None:
            approvers = authorizer.approvers
        self.manager, self.service = self.compose(config, approvers)

    @contextmanager
    def ceremonies_off(self) -> Iterator[None]:
        """Briefly as a process configured without ceremonies (the store's recorded policy
        still applies), then back to this world's configuration."""
        before = self.service.authorizer.config
        self.reconfigure(CeremonyConfig(enabled=False))
        try:
            yield
        finally:
            self.reconfigure(before)

    def actor(self, who: str) -> Actor:
        return self.service.actor(who)

    def statement(
        self, ceremony_id: str, who: str, decision: Decision = Decision.APPROVE, reason: str = "ok"
    ) -> ApprovalStatement:
        return self.service.statement(ceremony_id, who, decision, reason)

    def sign(
        self,
        ceremony_id: str,
        who: str,
        decision: Decision = Decision.APPROVE,
        reason: str = "Reviewed rotation plan, verified key parameters",
        key: PrivateKey | None = None,
    ) -> Envelope:
        st = self.statement(ceremony_id, who, decision, reason)
        return st.sign(key or self.keys[who], f"{who.split('@')[0]}-key")

    def approve(self, ceremony_id: str, who: str, **kw: Any) -> tuple[Ceremony, Approval]:
        return self.service.approve(self.actor(who), ceremony_id, self.sign(ceremony_id, who, **kw))

    def create(self, ceremony_type: str = "key-rotation", **kw: Any) -> Ceremony:
        payload = kw.pop("payload", None) or {"keyId": f"root-{len(self.events())}"}
        subject = kw.pop("subject", "Root signing key Q1-2026")
        return self.service.create(self.actor(INITIATOR), ceremony_type, subject, payload, **kw)

    def events(
        self, pattern: str = "signer.ceremony.*", ceremony_id: str | None = None
    ) -> list[AuditEvent]:
        return self.manager.audit_events(AuditQuery(event_type=pattern, ceremony_id=ceremony_id))

    def types(self, ceremony_id: str | None = None) -> list[str]:
        return [e.event_type for e in self.events(ceremony_id=ceremony_id)]


class ListNotifier:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def notify(self, notification: Any) -> None:
        self.sent.append(notification)


def approver_keys(
    names: Iterable[str] = (*CUSTODIANS, TRUST_ADMIN, OUTSIDER, SUSPENDED),
) -> dict[str, PrivateKey]:
    algs = ["ed25519", "ecdsa-p256-sha256"]
    return {n: get_algorithm(algs[i % 2]).generate() for i, n in enumerate(names)}


_KEYS_CACHE: dict[str, PrivateKey] = {}


def shared_approver_keys() -> dict[str, PrivateKey]:
    """Approver keys generated once per process (ML-DSA and ECDSA keygen add up in hypothesis)."""
    if not _KEYS_CACHE:
        _KEYS_CACHE.update(approver_keys())
    return dict(_KEYS_CACHE)


def make_world(
    store: Store,
    home: Path,
    *,
    config: CeremonyConfig | None = None,
    notifier: Notifier | None = None,
    clock: FrozenClock | None = None,
    initiator_in_group: bool = False,
) -> World:
    clock = clock or FrozenClock(T0)
    ks = MemoryKeyStore()
    stores: dict[str, Any] = {"memks": ks}

    def opener(uri: str, context: KeyStoreContext) -> Any:
        scheme = uri.split(":", 1)[0]
        if scheme not in stores:
            stores[scheme] = MemoryKeyStore(scheme)
        return stores[scheme]

    keys = shared_approver_keys()
    registry = ApproverRegistry.from_dict(
        approvers_document(
            {k: v.public_key() for k, v in keys.items()}, initiator_in_group=initiator_in_group
        )
    )

    def compose(
        config: CeremonyConfig, approvers: ApproverSource
    ) -> tuple[KeyManager, CeremonyService]:
        # Composed at construction, as KeyManager.from_settings does: one authorizer, given
        # to the facade and shared by the service.
        authorizer = CeremonyAuthorizer(config, approvers)
        manager = KeyManager(
            store,
            config=PROFILES,
            clock=clock,
            actor=INITIATOR,
            keystore_context=KeyStoreContext(home=home),
            open_key_store=opener,
            authorizer=authorizer,
        )
        return manager, CeremonyService(manager, authorizer, notifier=notifier)

    manager, service = compose(config or CeremonyConfig(enabled=True), registry)
    return World(manager, service, clock, keys, ks, compose=compose)


# --- multi-process workers (spawned: importable by name, arguments picklable) ------------

WORKER_PASSPHRASE = b"worker-test-passphrase"


def process_worker(
    home: str, action: str, who: str, key_pem: bytes | None, barrier: Any, results: Any
) -> None:
    """Open the shared home like a separate tool would, wait for the others, act, report."""
    from stellakeys.ceremony.service import CeremonyService
    from stellakeys.crypto import load_private_key_pem
    from stellakeys.errors import StellaKeysError

    manager = KeyManager.open(home, actor=who)
    try:
        assert manager.settings is not None
        service = CeremonyService.from_settings(manager, manager.settings)
        [ceremony] = service.list()
        envelope = None
        if action == "approve" and key_pem is not None:
            key = load_private_key_pem(key_pem, WORKER_PASSPHRASE)
            st = service.statement(ceremony.ceremony_id, who, Decision.APPROVE, f"ok from {who}")
            envelope = st.sign(key)
        barrier.wait(timeout=60)
        try:
            if action == "approve":
                service.approve(service.actor(who), ceremony.ceremony_id, envelope)
            else:
                service.execute(service.actor(who), ceremony.ceremony_id)
            results.put((action, who, "ok"))
        except StellaKeysError as exc:
            results.put((action, who, f"{type(exc).__name__}: {exc}"))
    finally:
        manager.close()
