"""The FastAPI application: parse, authenticate, authorize by scope (stellakeys_server.scopes),
call the library (stellakeys_server.actions), answer JSON or RFC 9457 problems.

Bodies are read with a size limit and parsed strictly (duplicate members refused, wrong types
a 422 naming the field) by hand rather than by pydantic models, so that the library's own
strict JSON rules apply to the API exactly as to files.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from stellakeys import strict_json
from stellakeys.clock import Clock
from stellakeys.config import Settings
from stellakeys.dsse import Envelope
from stellakeys.errors import MalformedTimeError, StellaKeysError
from stellakeys.storage.memory import MemoryStore
from stellakeys.storage.sqlite import SqliteStore
from stellakeys.times import parse_time
from stellakeys_server.actions import EVENT_BREAK_GLASS, EVENT_UNAUTHORIZED, Library
from stellakeys_server.auth import Authenticator, AuthError, Principal
from stellakeys_server.config import ServerConfig
from stellakeys_server.problems import Problem, from_library, response
from stellakeys_server.scopes import PUBLIC, ROUTES

__all__ = ["create_app"]

_log = logging.getLogger("stellakeys_server")
T = TypeVar("T")
Body = dict[str, Any]
MAX_AUDIT_LIMIT = 1000


class _Counters:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.unauthorized = Counter(
            "signer_ceremony_unauthorized_access",
            "API requests refused for authentication or authorization (401/403)",
            ["reason"],
            registry=registry,
        )
        self.approval_rejected = Counter(
            "signer_ceremony_approval_rejected",
            "Approvals refused by the ceremony service",
            ["code"],
            registry=registry,
        )
        self.break_glass = Counter(
            "signer_breakglass_used",
            "Requests made with break-glass credentials",
            registry=registry,
        )


# --- body helpers: each names the field it refuses ------------------------------------------


def _field(body: Body, name: str, kind: type | tuple[type, ...], *, required: bool) -> Any:
    if name not in body:
        if required:
            raise Problem(422, "invalid-field", f"{name} is required", field=name)
        return None
    value = body[name]
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        label = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise Problem(422, "invalid-field", f"{name} must be {label}", field=name)
    return value


def _text(body: Body, name: str, *, required: bool = True) -> str | None:
    value = _field(body, name, str, required=required)
    if value is not None and (not value.strip() or not value.isprintable()):
        if required:
            raise Problem(422, "invalid-field", f"{name} must be non-empty text", field=name)
        return None
    return value  # type: ignore[no-any-return]


def _time(value: str | None, name: str, now: Any = None) -> Any:
    if value is None:
        return None
    try:
        return parse_time(value, now=now)
    except MalformedTimeError as exc:
        raise Problem(422, "invalid-field", f"{name}: {exc}", field=name) from None


def _only(body: Body, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(422, "unknown-field", f"unknown field {unknown[0]!r}", field=unknown[0])


class Service:
    def __init__(self, settings: Settings, clock: Clock, config: ServerConfig) -> None:
        self.config = config
        self.lib = Library(settings, clock)
        self.auth = Authenticator(config, clock)
        self.registry = self.lib.metrics()
        self.counters = _Counters(self.registry)
        # A warm verification on an embedded store is ~0.2 ms of CPU under the GIL with no
        # network wait: run on the event loop it is faster than the thread-pool hop around it
        # (measured, benchmarks/README.md "signer service"). On PostgreSQL a verification may
        # wait on a round trip, which must not stall the loop: the thread pool, as before.
        self.verify_inline = isinstance(self.lib.base.store, SqliteStore | MemoryStore)

    # --- the request pipeline --------------------------------------------------------------

    async def principal(self, request: Request, scope: str | None) -> Principal:
        method, path = request.method, request.url.path
        authorization = request.headers.get("authorization")
        # A bearer token validated before and still good is answered on the event loop (a
        # digest and a dict lookup); anything else -- a first sight, break-glass -- is a full
        # validation (ES256, or scrypt) in the thread pool, off the loop.
        who = self.auth.cached(authorization)
        try:
            if who is None:
                who = await run_in_threadpool(self.auth.authenticate, authorization)
        except AuthError as exc:
            await self._refused("unauthenticated", exc.code, method, path, request)
            raise Problem(401, "unauthenticated", str(exc), reason=exc.code) from None
        if who.method == "break-glass":
            self.counters.break_glass.inc()
            await run_in_threadpool(
                self.lib.record_event,
                EVENT_BREAK_GLASS,
                who.identity,
                {"method": method, "path": path, "scopes": sorted(who.scopes)},
            )
        if scope is not None and scope not in who.scopes:
            await self._refused(who.identity, "missing-scope", method, path, request, scope)
            raise Problem(
                403,
                "missing-scope",
                f"{who.identity} lacks the {scope} scope for {method} {path}",
                scope=scope,
            )
        return who

    async def _refused(
        self,
        actor: str,
        reason: str,
        method: str,
        path: str,
        request: Request,
        scope: str | None = None,
    ) -> None:
        self.counters.unauthorized.labels(reason).inc()
        details: dict[str, Any] = {
            "reason": reason,
            "method": method,
            "path": path[:300],
            "client": request.client.host if request.client else None,
        }
        if scope is not None:
            details["scope"] = scope
        await run_in_threadpool(self.lib.record_event, EVENT_UNAUTHORIZED, actor, details)

    async def body(self, request: Request, *, optional: bool = False) -> Body:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Problem(413, "too-large", f"the body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Problem(413, "too-large", f"the body exceeds {limit} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            if optional:
                return {}
            raise Problem(422, "invalid-body", "a JSON object body is required")
        try:
            value = strict_json.loads(raw, document="the request body")
        except StellaKeysError as exc:
            raise Problem(422, "duplicate-member", str(exc)) from None
        except ValueError as exc:
            raise Problem(422, "invalid-body", f"the body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise Problem(422, "invalid-body", "the body must be a JSON object")
        return value

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in_threadpool(partial(fn, *args))

    # --- handlers (registered from scopes.ROUTES) -------------------------------------------

    async def healthz(self, request: Request, who: Principal | None) -> Any:
        await self.call(self.lib.base.list_anchors)  # the store answers
        return {"status": "ok"}

    async def metrics(self, request: Request, who: Principal | None) -> Response:
        data = await self.call(generate_latest, self.registry)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def generate_key(self, request: Request, who: Principal) -> Any:
        body = await self.body(request)
        _only(body, {"profile", "keyId", "algorithm"})
        key_id = _text(body, "keyId")
        profile = _text(body, "profile", required=False) or "default"
        algorithm = _text(body, "algorithm", required=False)
        return 201, await self.call(self.lib.generate_key, who.identity, key_id, profile, algorithm)

    async def list_keys(self, request: Request, who: Principal) -> Any:
        return await self.call(self.lib.list_keys)

    async def get_key(self, request: Request, who: Principal) -> Any:
        return await self.call(self.lib.get_key, request.path_params["keyId"])

    async def list_anchors(self, request: Request, who: Principal) -> Any:
        return await self.call(self.lib.list_anchors)

    async def get_anchor(self, request: Request, who: Principal) -> Any:
        return await self.call(self.lib.get_anchor, request.path_params["anchorId"])

    async def add_key(self, request: Request, who: Principal) -> Any:
        body = await self.body(request)
        _only(body, {"keyid", "publicKey"})
        key_id = _text(body, "keyid")
        public_key = _field(body, "publicKey", str, required=False) or None
        anchor_id = request.path_params["anchorId"]
        return 201, await self.call(self.lib.add_key, who.identity, anchor_id, key_id, public_key)

    async def revoke_key(self, request: Request, who: Principal) -> Any:
        body = await self.body(request)
        _only(body, {"reason", "effectiveAt"})
        reason = _text(body, "reason")
        effective = _time(_text(body, "effectiveAt", required=False), "effectiveAt", self.lib.now())
        p = request.path_params
        return await self.call(
            self.lib.revoke_key, who.identity, p["anchorId"], p["keyId"], reason, effective
        )

    async def verify(self, request: Request, who: Principal) -> Any:
        body = await self.body(request)
        _only(body, {"proofBundle", "envelope", "purl", "atTime"})
        bundle = _text(body, "proofBundle", required=False)
        envelope = _field(body, "envelope", dict, required=False)
        if (bundle is None) == (envelope is None):
            raise Problem(422, "invalid-field", "give proofBundle or envelope (one of them)")
        if bundle is not None and not bundle.startswith("sha256:"):
            raise Problem(
                422, "invalid-field", "proofBundle must be sha256:<hex>", field="proofBundle"
            )
        purl = _text(body, "purl", required=False)
        at = _time(_text(body, "atTime", required=False), "atTime")
        proof: str | bytes = bundle if bundle is not None else strict_json_bytes(envelope)
        if self.verify_inline:
            return self.lib.verify(proof, purl, at)
        return await self.call(self.lib.verify, proof, purl, at)

    async def audit(self, request: Request, who: Principal) -> Any:
        q = request.query_params
        allowed = {"eventType", "from", "to", "keyId", "anchorId", "ceremonyId", "limit"}
        unknown = sorted(set(q) - allowed)
        if unknown:
            raise Problem(
                422, "unknown-field", f"unknown parameter {unknown[0]!r}", field=unknown[0]
            )
        limit_text = q.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_AUDIT_LIMIT:
            raise Problem(
                422, "invalid-field", f"limit must be 1..{MAX_AUDIT_LIMIT}", field="limit"
            )
        anchor_id = q.get("anchorId")
        if anchor_id is not None:
            import uuid

            try:
                uuid.UUID(anchor_id)
            except ValueError:
                raise Problem(
                    422, "invalid-field", "anchorId must be a UUID", field="anchorId"
                ) from None
        return await self.call(
            self.lib.audit_query,
            q.get("eventType"),
            _time(q.get("from"), "from"),
            _time(q.get("to"), "to"),
            q.get("keyId"),
            anchor_id,
            q.get("ceremonyId"),
            int(limit_text),
        )

    async def ceremony_create(self, request: Request, who: Principal) -> Any:
        body = await self.body(request)
        _only(
            body,
            {"type", "subject", "threshold", "requiredApprovers", "expiresAt", "payload"},
        )
        ceremony_type = _text(body, "type")
        subject = _text(body, "subject")
        threshold = _field(body, "threshold", int, required=False)
        required = _field(body, "requiredApprovers", int, required=False)
        expires_at = _time(_text(body, "expiresAt", required=False), "expiresAt")
        payload = _field(body, "payload", dict, required=True)
        return 201, await self.call(
            self.lib.ceremony_create,
            who.identity,
            who.scopes,
            ceremony_type,
            subject,
            payload,
            threshold,
            required,
            expires_at,
        )

    async def ceremony_list(self, request: Request, who: Principal) -> Any:
        text = request.query_params.get("state")
        states = [s.strip() for s in text.split(",") if s.strip()] if text else None
        return await self.call(self.lib.ceremony_list, states)

    async def ceremony_get(self, request: Request, who: Principal) -> Any:
        return await self.call(self.lib.ceremony_get, request.path_params["ceremonyId"])

    async def ceremony_statement(self, request: Request, who: Principal) -> Any:
        reason = request.query_params.get("reason")
        if not reason:
            raise Problem(422, "invalid-field", "reason is required", field="reason")
        return await self.call(
            self.lib.ceremony_statement, who.identity, request.path_params["ceremonyId"], reason
        )

    async def ceremony_approve(self, request: Request, who: Principal) -> Any:
        body = await self.body(request)
        _only(body, {"reason", "signature"})
        reason = _text(body, "reason")
        signature = _field(body, "signature", (str, dict), required=False)
        envelope = _envelope(signature) if signature is not None else None
        return await self.call(
            self.lib.ceremony_approve,
            who.identity,
            who.scopes,
            request.path_params["ceremonyId"],
            envelope,
            reason,
        )

    async def ceremony_execute(self, request: Request, who: Principal) -> Any:
        return await self.call(
            self.lib.ceremony_execute, who.identity, who.scopes, request.path_params["ceremonyId"]
        )

    async def ceremony_cancel(self, request: Request, who: Principal) -> Any:
        body = await self.body(request, optional=True)
        _only(body, {"reason"})
        reason = (
            _text(body, "reason", required=False)
            or request.query_params.get("reason")
            or f"cancelled through the API by {who.identity}"
        )
        return await self.call(
            self.lib.ceremony_cancel,
            who.identity,
            who.scopes,
            request.path_params["ceremonyId"],
            reason,
        )


def strict_json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value).encode("utf-8")


def _envelope(signature: str | dict[str, Any]) -> Envelope:
    """``signature``: the DSSE envelope of the signed approval statement, as a JSON object or
    as base64 of its JSON (the runbook's "base64-encoded-dsse-signature")."""
    try:
        if isinstance(signature, dict):
            return Envelope.from_json(strict_json_bytes(signature))
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        return Envelope.from_json(raw)
    except (binascii.Error, UnicodeError, ValueError, StellaKeysError) as exc:
        raise Problem(
            422,
            "invalid-field",
            f"signature must be a DSSE envelope (JSON or base64 of it): {exc}",
            field="signature",
        ) from None


_HANDLERS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "healthz",
    ("GET", "/metrics"): "metrics",
    ("POST", "/v1/signer/keys"): "generate_key",
    ("GET", "/v1/signer/keys"): "list_keys",
    ("GET", "/v1/signer/keys/{keyId}"): "get_key",
    ("GET", "/v1/anchors"): "list_anchors",
    ("GET", "/v1/anchors/{anchorId}"): "get_anchor",
    ("POST", "/v1/anchors/{anchorId}/keys"): "add_key",
    ("POST", "/v1/anchors/{anchorId}/keys/{keyId}/revoke"): "revoke_key",
    ("POST", "/v1/verify"): "verify",
    ("GET", "/v1/audit"): "audit",
    ("POST", "/api/v1/ceremonies"): "ceremony_create",
    ("GET", "/api/v1/ceremonies"): "ceremony_list",
    ("GET", "/api/v1/ceremonies/{ceremonyId}"): "ceremony_get",
    ("GET", "/api/v1/ceremonies/{ceremonyId}/statement"): "ceremony_statement",
    ("POST", "/api/v1/ceremonies/{ceremonyId}/approve"): "ceremony_approve",
    ("POST", "/api/v1/ceremonies/{ceremonyId}/execute"): "ceremony_execute",
    ("DELETE", "/api/v1/ceremonies/{ceremonyId}"): "ceremony_cancel",
}


def create_app(settings: Settings, clock: Clock, config: ServerConfig | None = None) -> FastAPI:
    """The application over ``settings`` (signer.yaml, store) with time from ``clock``."""
    if set(_HANDLERS) != set(ROUTES):
        raise AssertionError("scopes.ROUTES and the handlers disagree")
    server_config = config or ServerConfig.from_document(settings.document, settings.home)
    service = Service(settings, clock, server_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.lib.close()

    app = FastAPI(
        title="stellakeys signer service",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return response(exc)

    @app.exception_handler(StellaKeysError)
    async def _library(request: Request, exc: StellaKeysError) -> Response:
        from stellakeys.ceremony.errors import ApprovalRejectedError, UnauthorizedError

        if isinstance(exc, ApprovalRejectedError):
            # The ceremony service has audited signer.ceremony.approval_rejected already.
            service.counters.approval_rejected.labels(exc.code).inc()
        elif isinstance(exc, UnauthorizedError):
            await service._refused(
                _identity(request), "forbidden", request.method, request.url.path, request
            )
        return response(from_library(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        _log.exception("internal error on %s %s", request.method, request.url.path)
        return response(Problem(500, "internal", f"internal error ({type(exc).__name__})"))

    for (method, path), name in _HANDLERS.items():
        scope = ROUTES[(method, path)]
        handler = getattr(service, name)
        app.add_api_route(
            path,
            _endpoint(service, handler, scope),
            methods=[method],
            name=name,
            summary=f"{method} {path} (scope: {scope or 'initiator or ceremony:cancel'})",
        )

    return app


def _identity(request: Request) -> str:
    who = getattr(request.state, "principal", None)
    return who.identity if isinstance(who, Principal) else "unauthenticated"


def _endpoint(
    service: Service,
    handler: Callable[[Request, Any], Awaitable[Any]],
    scope: str | None,
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        who = None if scope == PUBLIC else await service.principal(request, scope)
        request.state.principal = who
        result = await handler(request, who)
        if isinstance(result, Response):
            return result
        status = 200
        if isinstance(result, tuple):
            status, result = result
        return JSONResponse(result, status_code=status)

    return endpoint
