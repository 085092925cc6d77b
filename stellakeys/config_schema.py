"""The configuration schema: ``signer.yaml``, ``approvers.yaml`` and ``notifier-config.yaml``.

One JSON Schema (draft 2020-12) describes every configuration file; it is checked at load with
``jsonschema`` before any section is parsed, and published as ``docs/signer.schema.json`` and
``docs/approvers.schema.json`` so editors validate as the operator types (decision 0021).
Unknown keys are errors naming the file, the path and the closest known key ("did you mean
keyStore?"); a value of the wrong type names the path and the type expected. The section
parsers keep their own semantic checks (known algorithm, threshold bounds, URIs).

``python -m stellakeys.config_schema DIR`` writes the published files.
"""

from __future__ import annotations

import difflib
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stellakeys.ceremony.model import CEREMONY_TYPES
from stellakeys.errors import ConfigSchemaError

__all__ = [
    "APPROVERS_SCHEMA",
    "NOTIFIER_SCHEMA",
    "SIGNER_SCHEMA",
    "validate_config",
]

_CEREMONY_TYPES = list(CEREMONY_TYPES)
_STR: dict[str, Any] = {"type": "string"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_INT: dict[str, Any] = {"type": "integer"}
_STR_LIST: dict[str, Any] = {"type": "array", "items": _STR}
_DURATION: dict[str, Any] = {"type": "string", "description": "a duration like 24h, 30d, 10s"}


def _obj(props: Mapping[str, Any], *, required: Sequence[str] = (), null: bool = False) -> Any:
    schema: dict[str, Any] = {
        "type": ["object", "null"] if null else "object",
        "properties": dict(props),
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


_ROTATION = _obj(
    {
        "enabled": _BOOL,
        "maxAgeMonths": {**_INT, "minimum": 1},
        "warningMonths": {**_INT, "minimum": 0},
    },
    null=True,
)
_PROFILE = _obj(
    {
        "algorithm": {**_STR, "description": "an id or alias of the algorithm registry"},
        "keyStore": {
            **_STR,
            "minLength": 1,
            "description": "software://NAME, kms://aws/key/ID, an AWS KMS ARN or alias/NAME,"
            " hsm://pkcs11/slot/N or an RFC 7512 pkcs11: URI (docs/keystores.md)",
        },
        "rotation": _ROTATION,
    },
    required=["algorithm"],
)
_SIGNER = _obj(
    {
        "profiles": {"type": ["object", "null"], "additionalProperties": _PROFILE},
        "rotation": _obj({"warningMonths": {**_INT, "minimum": 0}}, null=True),
        "deprecatedAlgorithms": {"type": ["array", "null"], "items": _STR},
    },
)
_THRESHOLD = _obj(
    {
        "minimum": _INT,
        "default": _INT,
        "maximum": _INT,
        "requiredApprovers": _INT,
        "roles": _STR_LIST,
    }
)
_CEREMONIES = _obj(
    {
        "enabled": _BOOL,
        "defaultTimeout": _DURATION,
        "maxTimeout": _DURATION,
        "requireSignedApprovals": _BOOL,
        "allowSelfApproval": _BOOL,
        "approvers": {**_STR, "description": "approvers.yaml, relative to the home"},
        "thresholds": {
            "type": ["object", "null"],
            "propertyNames": {"enum": _CEREMONY_TYPES},
            "additionalProperties": _THRESHOLD,
        },
    },
    null=True,
)
_RECIPIENTS: dict[str, Any] = {"anyOf": [_STR, _STR_LIST]}
_TIMEOUT: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
_SMTP = _obj(
    {
        "host": _STR,
        "port": {"type": ["integer", "string"]},
        "from": _STR,
        "starttls": _BOOL,
        "ssl": _BOOL,
        "username": _STR,
        "password": _STR,
        "timeout": _TIMEOUT,
        "allowPlaintextAuth": _BOOL,
    },
    null=True,
)
_CHANNEL_KINDS: dict[str, Any] = {
    "email": {"type": _STR, "recipients": _RECIPIENTS, "smtp": _SMTP},
    "slack": {"type": _STR, "webhook": _STR, "channel": _STR, "timeout": _TIMEOUT},
    "webhook": {
        "type": _STR,
        "url": _STR,
        "headers": {"type": "object", "additionalProperties": _STR},
        "recipients": _RECIPIENTS,
        "timeout": _TIMEOUT,
    },
}
_CHANNEL: dict[str, Any] = {
    "type": "object",
    "properties": {"type": {"enum": sorted(_CHANNEL_KINDS)}},
    "required": ["type"],
    # One branch per channel type, so an unknown key is reported against that type's keys.
    "allOf": [
        {
            "if": {"properties": {"type": {"const": kind}}},
            "then": _obj(props),
        }
        for kind, props in sorted(_CHANNEL_KINDS.items())
    ],
}
_NOTIFICATIONS = _obj(
    {
        "smtp": _SMTP,
        "ceremonies": _obj(
            {"enabled": _BOOL, "channels": {"type": ["array", "null"], "items": _CHANNEL}},
            null=True,
        ),
    },
    null=True,
)
_TIMESTAMPING = _obj(
    {
        "tsaRoots": {"anyOf": [_STR, _STR_LIST]},
        "tsaUrl": _STR,
        "hashAlgorithm": {"enum": ["sha256", "sha512", "SHA256", "SHA512"]},
        "timeout": {"type": ["string", "number"]},
    },
    null=True,
)
_FEED = _obj(
    {
        "keyIds": _STR_LIST,
        "threshold": {**_INT, "minimum": 1},
        "expiresIn": _DURATION,
        "urgentExpiresIn": _DURATION,
    },
)

#: ``stellaops serve`` (stellakeys_server/config.py parses it again, strictly, with its limits).
_SERVER = _obj(
    {
        "oidc": _obj(
            {
                "issuer": _STR,
                "audience": _STR,
                "jwksUri": _STR,
                "jwksFile": _STR,
                "algorithms": _STR_LIST,
                "leewaySeconds": _INT,
                "jwksRefreshFloorSeconds": _INT,
            },
            required=["issuer", "audience"],
        ),
        "breakGlass": _obj(
            {
                "enabled": _BOOL,
                "accounts": {
                    "type": ["array", "null"],
                    "items": _obj(
                        {
                            "name": _STR,
                            "passwordHash": _STR,
                            "scopes": _STR_LIST,
                            "validUntil": _STR,
                        },
                        required=["name", "passwordHash", "scopes", "validUntil"],
                    ),
                },
            },
            null=True,
        ),
        "maxBodyBytes": _INT,
    },
    null=True,
)

_APPROVER_GROUPS: dict[str, Any] = {
    "type": ["array", "null"],
    "items": _obj(
        {
            "name": _STR,
            "members": _STR_LIST,
            "operations": {"type": "array", "items": {"enum": _CEREMONY_TYPES}},
        },
        required=["name"],
    ),
}
_APPROVERS: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": _obj(
        {
            "scopes": {"type": ["array", "null"], "items": _STR},
            "keys": {
                "type": ["array", "null"],
                "items": _obj(
                    {
                        "keyId": {**_STR, "minLength": 1},
                        "algorithm": _STR,
                        "publicKey": _STR,
                        "publicKeyFile": _STR,
                        "revoked": _BOOL,
                    },
                    required=["keyId"],
                ),
            },
        },
        null=True,
    ),
}

_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: ``signer.yaml`` (the file given by ``--config`` / ``STELLAKEYS_CONFIG`` / ``<home>``).
SIGNER_SCHEMA: Mapping[str, Any] = {
    "$schema": _DIALECT,
    "$id": "https://stellakeys.dev/schemas/signer.schema.json",
    "title": "stellakeys signer.yaml",
    **_obj(
        {
            "signer": _SIGNER,
            "database": _obj(
                {
                    "url": _STR,
                    "maxStaleness": {"type": "number", "exclusiveMinimum": 0},
                    "listenUrl": _STR,
                    "pooler": {"enum": ["transaction"]},
                },
                null=True,
            ),
            "ceremonies": _CEREMONIES,
            "notifications": _NOTIFICATIONS,
            "timestamping": _TIMESTAMPING,
            "feed": _FEED,
            "server": _SERVER,
            # approvers.yaml's content may also sit in signer.yaml (CeremonyService reads it
            # when ceremonies.approvers names no file).
            "approverGroups": _APPROVER_GROUPS,
            "approvers": _APPROVERS,
        },
        null=True,
    ),
}

#: ``<home>/notifier-config.yaml``: the ``notifications`` section on its own.
NOTIFIER_SCHEMA: Mapping[str, Any] = {
    "$schema": _DIALECT,
    "title": "stellakeys notifier-config.yaml",
    **_obj({"notifications": _NOTIFICATIONS}, null=True),
}

#: ``approvers.yaml``.
APPROVERS_SCHEMA: Mapping[str, Any] = {
    "$schema": _DIALECT,
    "$id": "https://stellakeys.dev/schemas/approvers.schema.json",
    "title": "stellakeys approvers.yaml",
    **_obj(
        {
            "approverGroups": _APPROVER_GROUPS,
            "approvers": _APPROVERS,
        },
        null=True,
    ),
}

_SCHEMAS = {"signer": SIGNER_SCHEMA, "approvers": APPROVERS_SCHEMA, "notifier": NOTIFIER_SCHEMA}

_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}


@functools.cache
def _validator(kind: str) -> Any:
    import jsonschema  # type: ignore[import-untyped]

    schema = _SCHEMAS[kind]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the document)"


def _closest(word: str, known: Sequence[str]) -> str | None:
    folded = {k.lower(): k for k in known}
    if word.lower() in folded:
        return folded[word.lower()]
    match = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    if not match:
        match = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
        match = [folded[m] for m in match]
    return match[0] if match else None


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, Mapping | list) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: Any) -> tuple[str, str]:
    """(path, what is wrong and how to fix it) for one jsonschema error."""
    parts = list(error.absolute_path)
    kind = error.validator
    if kind == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(str(k) for k in error.instance if k not in error.schema.get("properties"))
        key = extra[0]
        hint = _closest(key, known)
        where = _path([*parts, key])
        fix = f"did you mean {hint}?" if hint else f"known keys: {', '.join(known) or 'none'}"
        return where, f"unknown key; {fix}"
    if "propertyNames" in error.schema_path and kind == "enum":
        known = [str(k) for k in error.validator_value]
        key = str(error.instance)
        hint = _closest(key, known)
        fix = f"did you mean {hint}?" if hint else f"known: {', '.join(known)}"
        return _path([*parts, key]), f"unknown key; {fix}"
    if kind == "type":
        types = error.validator_value
        types = [types] if isinstance(types, str) else [t for t in types if t != "null"]
        expected = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        return _path(parts), f"expected {expected}, got {_shown(error.instance)}"
    if kind == "anyOf":
        words = []
        for sub in error.validator_value:
            t = sub.get("type")
            words.append("a list of strings" if t == "array" else _TYPE_WORDS.get(t, str(t)))
        return _path(parts), f"expected {' or '.join(words)}, got {_shown(error.instance)}"
    if kind == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        return _path(parts), f"{missing[0] if missing else '?'} is required"
    if kind in ("enum", "const"):
        allowed = error.validator_value if kind == "enum" else [error.validator_value]
        hint = _closest(str(error.instance), [str(a) for a in allowed])
        fix = f"did you mean {hint}?" if hint else f"one of: {', '.join(map(str, allowed))}"
        return _path(parts), f"{_shown(error.instance)} is not allowed; {fix}"
    if kind in ("minimum", "exclusiveMinimum", "minLength"):
        if kind == "minLength":
            return _path(parts), "must not be empty"
        op = ">=" if kind == "minimum" else ">"
        return _path(parts), f"must be {op} {error.validator_value}, got {_shown(error.instance)}"
    return _path(parts), error.message


def _order(error: Any) -> tuple[int, tuple[str, ...]]:
    # Unknown keys first (a typo explains the errors it causes), then document order.
    unknown = error.validator == "additionalProperties" or "propertyNames" in error.schema_path
    rank = 0 if unknown else 1
    return rank, tuple(str(p) for p in error.absolute_path)


def validate_config(document: Any, source: Path | str, kind: str = "signer") -> None:
    """Check a parsed configuration document against its schema.

    ``kind`` is ``signer``, ``approvers`` or ``notifier``. Raises :class:`ConfigSchemaError`
    naming ``source``, the path of the first problem and the fix; the message counts the others.
    """
    if kind not in _SCHEMAS:
        raise ValueError(f"unknown configuration kind {kind!r}")
    if document is not None and not isinstance(document, Mapping):
        raise ConfigSchemaError(
            f"{source}: the document must be a mapping (got {_shown(document)})",
            path="",
            source=str(source),
        )
    errors = sorted(_validator(kind).iter_errors(_plain(document)), key=_order)
    if not errors:
        return
    where, what = _describe(errors[0])
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise ConfigSchemaError(f"{source}: {where}: {what}{more}", path=where, source=str(source))


def _plain(value: Any) -> Any:
    """YAML keys may be ints or dates; the schema speaks of strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def write_published(directory: Path) -> list[Path]:
    """Write ``signer.schema.json`` and ``approvers.schema.json`` into ``directory``."""
    written = []
    for name, schema in (("signer", SIGNER_SCHEMA), ("approvers", APPROVERS_SCHEMA)):
        path = directory / f"{name}.schema.json"
        path.write_text(published_text(schema), encoding="utf-8")
        written.append(path)
    return written


def published_text(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    for written_path in write_published(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(written_path)
