"""The one parser of key store URIs (issue 17): pure, no PKCS#11 or AWS library imported.

Accepted everywhere a key store is named (``signer.yaml`` ``keyStore``, ``open_key_store``,
key records):

* ``software://<name>``;
* RFC 7512 ``pkcs11:`` URIs (every path attribute of section 2.3 -- ``token``, ``object``,
  ``id``, ``type``, ``serial``, ``slot-id``, ... -- and the query attributes ``module-path``,
  ``module-name``, ``pin-source``, ``max-sessions``; ``x-`` and other vendor attributes are
  kept) and the runbook's ``hsm://pkcs11[/slot/<id>|/token/<label>|/serial/<s>][/id/<hex>]``;
* ``kms://aws[/key/<key id, alias/<name>, alias name or ARN>][?region=..&profile=..]``, and
  beside it a bare AWS KMS key or alias ARN (``arn:aws:kms:eu-west-1:111122223333:key/<uuid>``)
  or a bare ``alias/<name>``, which :func:`canonical_uri` rewrites to the ``kms://`` form;
* any other ``<scheme>:...`` for plugins (checked by the plugin).

``pin-value`` is refused: URIs end up in configs, key records and logs.
"""

from __future__ import annotations

import difflib
import re
from urllib.parse import parse_qs, quote, unquote, unquote_to_bytes

import attrs

from stellakeys.errors import KeyStoreError

__all__ = ["KmsUri", "Pkcs11Uri", "canonical_uri", "check_key_store_uri"]

PIN_ENV = "STELLAKEYS_PKCS11_PIN"
PIN_FILE_ENV = "STELLAKEYS_PKCS11_PIN_FILE"

#: RFC 7512 section 2.3: path attributes (pk11-path-attr) and query attributes (pk11-qattr).
_PATH_ATTRS = (
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "object",
    "type",
    "id",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
)
_QUERY_ATTRS = ("pin-source", "pin-value", "module-name", "module-path", "max-sessions")
_OBJECT_TYPES = ("public", "private", "cert", "secret-key", "data")
_ATTR_NAME = re.compile(r"[A-Za-z0-9-]+")


#: A '%' not followed by two hex digits (RFC 3986 pct-encoded is "%" HEXDIG HEXDIG).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _decoded(name: str, value: str, uri: str) -> str:
    """One attribute's value, percent-decoded strictly: a stray '%' or bytes that are not
    UTF-8 are an error, never a replacement character in a module path or a token label."""
    _check_escapes(name, value, uri)
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise KeyStoreError(
            f"attribute {name!r} of PKCS#11 URI {uri!r} is not UTF-8 once decoded"
        ) from None


def _check_escapes(name: str, value: str, uri: str) -> None:
    if _BAD_ESCAPE.search(value):
        raise KeyStoreError(
            f"attribute {name!r} of PKCS#11 URI {uri!r} has a '%' that is not followed by two"
            " hex digits: write a literal '%' as %25"
        )


def _unknown(name: str, known: tuple[str, ...], uri: str) -> KeyStoreError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
    return KeyStoreError(f"unknown attribute {name!r} in PKCS#11 URI {uri!r}{hint}")


def _is_vendor(name: str, known: tuple[str, ...]) -> bool:
    # RFC 7512 2.3: vendor-specific attributes ("x-" recommended; its own examples use
    # "vendor-aaa"). A name without a '-', or one a letter away from a standard name
    # ("modul-path"), is far more likely a typo.
    if name.startswith("x-"):
        return True
    return "-" in name and not difflib.get_close_matches(name, known, n=1, cutoff=0.8)


@attrs.frozen
class Pkcs11Uri:
    """The parts of a ``pkcs11:`` (RFC 7512) or ``hsm://pkcs11/...`` URI that we use."""

    token: str | None = None
    serial: str | None = None
    slot_id: int | None = None
    object: str | None = None
    id: bytes | None = None
    type: str | None = None
    module_path: str | None = None
    pin_source: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    module_name: str | None = None
    #: Every other attribute (library-*, slot-description, vendor ones), decoded.
    other: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, uri: str) -> Pkcs11Uri:
        path, _, query = uri.partition("?")
        values: dict[str, str] = {}
        raw_id: bytes | None = None
        if path[:7].lower() == "pkcs11:":
            for part in path[7:].split(";") if path[7:] else ():
                name, eq, value = part.partition("=")
                name = name.lower()
                if not eq or not _ATTR_NAME.fullmatch(name):
                    raise KeyStoreError(
                        f"bad attribute {part!r} in PKCS#11 URI {uri!r}: expected name=value"
                    )
                if name in _QUERY_ATTRS:
                    raise KeyStoreError(
                        f"{name} belongs in the query of PKCS#11 URI {uri!r}: pkcs11:...?{name}=..."
                    )
                if name not in _PATH_ATTRS and not _is_vendor(name, _PATH_ATTRS):
                    raise _unknown(name, _PATH_ATTRS, uri)
                if name in values:
                    raise KeyStoreError(f"attribute {name!r} twice in PKCS#11 URI {uri!r}")
                if name == "id":
                    # Every byte percent-encoded: the raw bytes, not text.
                    _check_escapes(name, value, uri)
                    raw_id = unquote_to_bytes(value)
                    values[name] = value
                    continue
                values[name] = _decoded(name, value, uri)
        elif path.lower().startswith("hsm://pkcs11"):
            segments = [s for s in path[len("hsm://pkcs11") :].split("/") if s]
            if len(segments) % 2:
                raise KeyStoreError(
                    f"bad HSM URI {uri!r}: expected hsm://pkcs11[/slot/<id>|/token/<label>|"
                    "/serial/<serial>][/id/<hex>]"
                )
            names = {"slot": "slot-id", "token": "token", "serial": "serial", "id": "id-hex"}
            for name, value in zip(segments[::2], segments[1::2], strict=True):
                if name.lower() not in names:
                    raise KeyStoreError(
                        f"unknown segment {name!r} in HSM URI {uri!r}; known: slot, token,"
                        " serial, id"
                    )
                if names[name.lower()] in values:
                    raise KeyStoreError(f"segment {name!r} twice in HSM URI {uri!r}")
                values[names[name.lower()]] = _decoded(name, value, uri)
        else:
            raise KeyStoreError(f"not a PKCS#11 URI: {uri!r}")
        in_query: set[str] = set()
        for part in query.split("&") if query else ():
            name, eq, value = part.partition("=")
            name = name.lower()
            if not eq or not _ATTR_NAME.fullmatch(name):
                raise KeyStoreError(f"bad query attribute {part!r} in PKCS#11 URI {uri!r}")
            if name not in _QUERY_ATTRS and not _is_vendor(name, _QUERY_ATTRS):
                raise _unknown(name, _QUERY_ATTRS, uri)
            if name in in_query or name in values:
                # Which one would win is a guess the reader of a config cannot see
                # (module-path=/a&module-path=/b): refuse, as for the path (RFC 7512 2.3).
                raise KeyStoreError(f"attribute {name!r} twice in PKCS#11 URI {uri!r}")
            in_query.add(name)
            values[name] = _decoded(name, value, uri)
        if "pin-value" in values:
            raise KeyStoreError(
                "refusing pin-value in a PKCS#11 URI: URIs end up in configs, key records and "
                f"logs; use pin-source=<file>, ${PIN_ENV} or ${PIN_FILE_ENV}"
            )
        kind = values.get("type")
        if kind is not None and kind not in _OBJECT_TYPES:
            raise KeyStoreError(
                f"type={kind!r} in PKCS#11 URI {uri!r}: expected one of {', '.join(_OBJECT_TYPES)}"
            )
        try:
            slot_id = int(values["slot-id"]) if "slot-id" in values else None
            if "id-hex" in values:
                raw_id = bytes.fromhex(values["id-hex"])
        except ValueError as exc:
            raise KeyStoreError(f"bad slot or key id in PKCS#11 URI {uri!r}: {exc}") from None
        pin_source = values.get("pin-source")
        if pin_source is not None and pin_source.startswith("file:"):
            pin_source = pin_source[len("file:") :]
        used = {
            "token",
            "serial",
            "slot-id",
            "object",
            "id",
            "id-hex",
            "type",
            "module-path",
            "pin-source",
            "manufacturer",
            "model",
            "module-name",
        }
        return cls(
            token=values.get("token"),
            serial=values.get("serial"),
            slot_id=slot_id,
            object=values.get("object"),
            id=raw_id,
            type=kind,
            module_path=values.get("module-path"),
            pin_source=pin_source,
            manufacturer=values.get("manufacturer"),
            model=values.get("model"),
            module_name=values.get("module-name"),
            other=tuple((k, v) for k, v in values.items() if k not in used),
        )


def unquote_to_bytes_attr(path: str, name: str) -> bytes:
    """The raw bytes of one percent-encoded RFC 7512 path attribute."""
    for part in path[len("pkcs11:") :].split(";"):
        key, _, value = part.partition("=")
        if key.lower() == name:
            return unquote_to_bytes(value)
    raise ValueError(f"no {name} attribute")


def pct(value: str) -> str:
    return quote(value, safe="-._~")


# --- AWS KMS -----------------------------------------------------------------------------------

_KMS_URI = re.compile(r"kms://aws(?:/key/(?P<key>[^?]+))?/?(?:\?(?P<query>.*))?")
_KEY_UUID = re.compile(
    r"mrk-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
_ALIAS_CHARS = re.compile(r"[A-Za-z0-9/_-]+")
#: arn:<partition>:kms:<region>:<account>:key/<id> or ...:alias/<name>.
_KMS_ARN = re.compile(
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov|aws-iso[a-z-]*):kms:(?P<region>[a-z0-9-]+):"
    r"(?P<account>\d{12}):(?P<resource>key/(?:" + _KEY_UUID.pattern + r")|alias/[A-Za-z0-9/_-]+)"
)


@attrs.frozen
class KmsUri:
    #: ``alias/<name>``, a key id, a key ARN, or None.
    key: str | None
    region: str | None = None
    profile: str | None = None

    @property
    def is_alias(self) -> bool:
        return self.key is not None and self.key.startswith("alias/")

    @property
    def is_pinned(self) -> bool:
        return self.key is not None and bool(_KEY_UUID.fullmatch(self.key))

    @classmethod
    def parse(cls, uri: str) -> KmsUri:
        uri = canonical_uri(uri)
        match = _KMS_URI.fullmatch(uri)
        if match is None:
            raise KeyStoreError(
                f"not a KMS key store URI: {uri!r}; expected kms://aws/key/<id-or-alias>,"
                " a KMS key ARN or alias/<name>"
            )
        try:
            query = parse_qs(match["query"] or "", strict_parsing=bool(match["query"]))
        except ValueError:
            raise KeyStoreError(
                f"bad query in KMS URI {uri!r}: expected region=..&profile=.."
            ) from None
        unknown = sorted(set(query) - {"region", "profile"})
        if unknown:
            raise KeyStoreError(
                f"unknown parameter {unknown[0]!r} in KMS URI {uri!r}; known: region, profile"
            )
        region = query.get("region", [None])[-1]
        profile = query.get("profile", [None])[-1]
        key = match["key"]
        if key is not None and key.startswith("arn:"):
            arn = _KMS_ARN.fullmatch(key)
            if arn is None:
                raise KeyStoreError(
                    f"not a KMS key ARN: {key!r}; expected"
                    " arn:aws:kms:<region>:<account>:key/<key id> or ...:alias/<name>"
                )
            if region is not None and region != arn["region"]:
                raise KeyStoreError(
                    f"KMS URI {uri!r}: region={region} contradicts the ARN's {arn['region']}"
                )
            region = arn["region"]
        elif key is not None and not (key.startswith("alias/") or _KEY_UUID.fullmatch(key)):
            key = "alias/" + key  # the runbook's kms://aws/key/stellaops-default
        if key is not None and key.startswith("alias/") and not _ALIAS_CHARS.fullmatch(key):
            raise KeyStoreError(f"invalid KMS alias {key!r}: use letters, digits, '/', '_', '-'")
        return cls(key, region, profile)


# --- every scheme ------------------------------------------------------------------------------

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def canonical_uri(uri: str) -> str:
    """``uri`` with the AWS shorthands rewritten: a bare KMS ARN or ``alias/<name>`` becomes
    ``kms://aws/key/...``; everything else is returned unchanged."""
    text = uri.strip()
    if text.startswith("arn:") and ":kms:" in text:
        return f"kms://aws/key/{text}"
    if text.startswith("alias/"):
        return f"kms://aws/key/{text}"
    return uri


def check_key_store_uri(uri: str) -> str:
    """Parse ``uri`` as :func:`stellakeys.keystores.open_key_store` would, without opening
    anything; return its canonical form. Raises KeyStoreError naming what is wrong."""
    if not isinstance(uri, str) or not uri.strip():
        raise KeyStoreError("a key store URI must be a non-empty string, e.g. software://default")
    canonical = canonical_uri(uri)
    match = _SCHEME.match(canonical)
    if match is None:
        raise KeyStoreError(
            f"not a key store URI: {uri!r}; expected software://<name>, kms://aws/key/<id>,"
            " a KMS key ARN, alias/<name>, hsm://pkcs11/slot/<n> or pkcs11:token=<label>"
        )
    scheme = match.group(1).lower()
    if scheme == "software":
        if not re.fullmatch(r"software://[^/#?]*(?:/[^/#?]*)?(?:#SHA256:[0-9a-f]{64})?", canonical):
            raise KeyStoreError(f"bad software key store URI {uri!r}: expected software://<name>")
    elif scheme in ("pkcs11", "hsm"):
        Pkcs11Uri.parse(canonical)
    elif scheme == "kms":
        KmsUri.parse(canonical)
    return canonical
