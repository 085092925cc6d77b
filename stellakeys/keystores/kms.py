"""AWS KMS key store through boto3 (the ``kms`` extra). Deliberately small.

Store URIs::

    kms://aws/key/alias/stellaops-default      an alias that generate() points at each new key
    kms://aws/key/stellaops-default            the same (a bare name is an alias name)
    kms://aws                                  generate() makes keys without a profile alias
    ...?region=eu-west-1&profile=prod          region and credentials profile (optional)

Pinned key URIs are ``kms://aws/key/<key-uuid>?region=<region>``: the alias is resolved at
generation time, so a later rotation that moves the alias never changes which key an old
record names. Every generated key also gets the alias ``alias/stellakeys/<key_id>``, which
makes "never two keys with one id" atomic (CreateAlias fails if it exists) and lets people
find keys in the console.

Key specs: ECC_NIST_P256 (ECDSA_SHA_256), ECC_NIST_P384 (ECDSA_SHA_384) and
ECC_NIST_EDWARDS25519 (ED25519_SHA_512, pure Ed25519). KMS signs RAW messages of at most
4,096 bytes: longer ECDSA messages are hashed here and sent as DIGEST (same signature); a
longer Ed25519 message is refused, because ED25519_PH_SHA_512 is Ed25519ph, another scheme.

Region: URI ``region``, else boto3's own lookup (``AWS_REGION``, ``AWS_DEFAULT_REGION``,
config). Endpoint: ``$STELLAKEYS_KMS_ENDPOINT``, else ``$AWS_ENDPOINT_URL``, else AWS.
Credentials: boto3's usual chain (and ``profile``); this module never sees a secret key.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from typing import Any, NoReturn, final
from urllib.parse import quote

import attrs

from stellakeys.crypto import Algorithm, PublicKey, get_algorithm
from stellakeys.errors import KeyStoreError, StellaKeysError
from stellakeys.keystores.ports import FoundKey, KeyStoreContext, PreparedKey
from stellakeys.keystores.uris import KmsUri

try:
    import boto3
    import botocore.exceptions
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise KeyStoreError("the KMS key store needs boto3: pip install 'stellakeys[kms]'") from exc

__all__ = ["KmsKeyHandle", "KmsKeyStore"]

ENDPOINT_ENV = "STELLAKEYS_KMS_ENDPOINT"
MAX_RAW_MESSAGE = 4096
KEY_ALIAS_PREFIX = "alias/stellakeys/"


@attrs.frozen
class _Spec:
    key_spec: str
    signing_algorithm: str
    hash_name: str | None  # for DIGEST signing of long messages; None: RAW only


_SPECS: dict[str, _Spec] = {
    "ecdsa-p256-sha256": _Spec("ECC_NIST_P256", "ECDSA_SHA_256", "sha256"),
    "ecdsa-p384-sha384": _Spec("ECC_NIST_P384", "ECDSA_SHA_384", "sha384"),
    "ed25519": _Spec("ECC_NIST_EDWARDS25519", "ED25519_SHA_512", None),
}
_BY_KEY_SPEC = {spec.key_spec: alg for alg, spec in _SPECS.items()}

_ALIAS_CHARS = re.compile(r"[A-Za-z0-9/_-]+")


def _client_error(what: str, exc: Exception) -> KeyStoreError:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return KeyStoreError(f"KMS {what} failed: {error.get('Code')}: {error.get('Message')}")
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return KeyStoreError(
            f"KMS {what}: no usable AWS credentials (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile, or an instance role)"
        )
    return KeyStoreError(f"KMS {what} failed: {type(exc).__name__}: {exc}")


def _code(exc: Exception) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        code: str | None = exc.response.get("Error", {}).get("Code")
        return code
    return None


@final
class KmsKeyHandle:
    __slots__ = ("_spec", "_store", "algorithm", "key_arn", "public", "uri")

    def __init__(
        self, store: KmsKeyStore, uri: str, key_arn: str, algorithm: Algorithm, public: PublicKey
    ) -> None:
        self._store = store
        self.uri = uri
        self.key_arn = key_arn
        self.algorithm = algorithm
        self.public = public
        self._spec = _SPECS[algorithm.id]

    def sign(self, data: bytes, /) -> bytes:
        spec = self._spec
        if len(data) <= MAX_RAW_MESSAGE:
            message, message_type = data, "RAW"
        elif spec.hash_name is not None:
            message, message_type = hashlib.new(spec.hash_name, data).digest(), "DIGEST"
        else:
            raise KeyStoreError(
                f"KMS signs {self.algorithm.id} only over messages up to {MAX_RAW_MESSAGE} "
                f"bytes (this one has {len(data)}); use an ECDSA profile or another key store"
            )
        response = self._store._call(
            "Sign",
            KeyId=self.key_arn,
            Message=message,
            MessageType=message_type,
            SigningAlgorithm=spec.signing_algorithm,
        )
        signature: bytes = response["Signature"]
        return signature

    def public_key(self) -> PublicKey:
        return self.public

    def __repr__(self) -> str:
        return f"<KmsKeyHandle {self.uri}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key handles cannot be pickled")


class KmsKeyStore:
    """Keys in AWS KMS. ``KmsKeyStore(KmsUri(...), endpoint_url=..., session_factory=...)``."""

    def __init__(
        self,
        target: KmsUri,
        *,
        endpoint_url: str | None = None,
        session_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.target = target
        self.endpoint_url = endpoint_url
        self._session_factory = session_factory
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, context: KeyStoreContext) -> KmsKeyStore:
        endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL") or None
        return cls(KmsUri.parse(uri), endpoint_url=endpoint)

    def __repr__(self) -> str:
        return f"<KmsKeyStore {self.target.key or '(no alias)'} region={self.target.region}>"

    def _kms(self) -> Any:
        # boto3 clients are thread-safe; creating one (and its session) is not, hence the lock.
        with self._lock:
            if self._client is None:
                try:
                    if self._session_factory is not None:
                        session = self._session_factory()
                    else:
                        session = boto3.session.Session(profile_name=self.target.profile)
                    self._client = session.client(
                        "kms", region_name=self.target.region, endpoint_url=self.endpoint_url
                    )
                except botocore.exceptions.NoRegionError:
                    raise KeyStoreError(
                        "no AWS region for the KMS key store: add ?region=<region> to the URI "
                        "or set AWS_REGION"
                    ) from None
                except botocore.exceptions.BotoCoreError as exc:
                    raise _client_error("client setup", exc) from None
            return self._client

    @property
    def region(self) -> str:
        region: str = self._kms().meta.region_name
        return region

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        method = {
            "Sign": "sign",
            "CreateKey": "create_key",
            "CreateAlias": "create_alias",
            "UpdateAlias": "update_alias",
            "DescribeKey": "describe_key",
            "GetPublicKey": "get_public_key",
            "ScheduleKeyDeletion": "schedule_key_deletion",
            "ListAliases": "list_aliases",
        }[operation]
        try:
            result: dict[str, Any] = getattr(self._kms(), method)(**params)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if _code(exc) == "NotFoundException":
                raise KeyStoreError(
                    f"no KMS key {params.get('KeyId') or params.get('TargetKeyId')!r} "
                    f"in {self.region}"
                ) from None
            raise _client_error(operation, exc) from None
        return result

    def _pinned_uri(self, key_uuid: str) -> str:
        return f"kms://aws/key/{key_uuid}?region={quote(self.region, safe='')}"

    def _public(self, key: str, algorithm: Algorithm) -> PublicKey:
        der = self._call("GetPublicKey", KeyId=key)["PublicKey"]
        try:
            public = algorithm.load_public_der(der)
        except StellaKeysError as exc:
            raise KeyStoreError(f"KMS returned an unusable public key: {exc}") from None
        if public.algorithm is not algorithm:
            raise KeyStoreError(f"KMS key {key} is not a {algorithm.id} key")
        return public

    def generate(
        self,
        algorithm: Algorithm,
        key_id: str,
        *,
        prepared: Callable[[PreparedKey], None] | None = None,
    ) -> KmsKeyHandle:
        spec = _SPECS.get(algorithm.id)
        if spec is None:
            raise KeyStoreError(
                f"the KMS key store cannot generate {algorithm.id!r}; supported: "
                + ", ".join(_SPECS)
            )
        if not _ALIAS_CHARS.fullmatch(key_id) or len(key_id) > 200:
            raise KeyStoreError(
                f"invalid key id {key_id!r} for KMS: it becomes the alias "
                f"{KEY_ALIAS_PREFIX}<key id>, so use letters, digits, '_' and '-'"
            )
        if self.target.key is not None and not self.target.is_alias:
            raise KeyStoreError(
                f"the KMS store URI names the key {self.target.key}; generating needs an alias "
                "URI (kms://aws/key/alias/<name>) or kms://aws"
            )
        key_alias = KEY_ALIAS_PREFIX + key_id
        try:
            self._call("DescribeKey", KeyId=key_alias)
        except KeyStoreError as exc:
            if not str(exc).startswith("no KMS key"):
                raise
        else:
            raise KeyStoreError(f"key {key_id!r} already exists in KMS ({key_alias})")
        metadata = self._call(
            "CreateKey",
            KeySpec=spec.key_spec,
            KeyUsage="SIGN_VERIFY",
            Description=f"stellakeys key {key_id}",
            Tags=[{"TagKey": "stellakeys:key-id", "TagValue": key_id}],
        )["KeyMetadata"]
        key_uuid: str = metadata["KeyId"]
        if prepared is not None:
            # The key is not yet findable by its key id (no alias): the caller records its
            # pinned URI and public key first, so after a crash past the alias it is recognised.
            prepared(PreparedKey(self._pinned_uri(key_uuid), self._public(key_uuid, algorithm)))
        try:
            self._call("CreateAlias", AliasName=key_alias, TargetKeyId=key_uuid)
        except KeyStoreError:
            # Lost a race for the key id: do not leave an orphan key behind.
            self._call("ScheduleKeyDeletion", KeyId=key_uuid, PendingWindowInDays=7)
            raise KeyStoreError(f"key {key_id!r} already exists in KMS ({key_alias})") from None
        public = self._public(key_uuid, algorithm)
        if self.target.is_alias:
            assert self.target.key is not None
            try:
                self._call("UpdateAlias", AliasName=self.target.key, TargetKeyId=key_uuid)
            except KeyStoreError as exc:
                if not str(exc).startswith("no KMS key"):
                    raise
                self._call("CreateAlias", AliasName=self.target.key, TargetKeyId=key_uuid)
        return KmsKeyHandle(self, self._pinned_uri(key_uuid), metadata["Arn"], algorithm, public)

    def open(self, uri: str) -> KmsKeyHandle:
        pinned = KmsUri.parse(uri)
        if not pinned.is_pinned:
            raise KeyStoreError(
                f"not a pinned KMS key URI: {uri!r}; aliases move on rotation, so a key is "
                "named by its key id: kms://aws/key/<key-uuid>?region=<region>"
            )
        if pinned.region is not None and pinned.region != self.region:
            raise KeyStoreError(f"{uri} is in region {pinned.region}, this store in {self.region}")
        assert pinned.key is not None
        metadata = self._call("DescribeKey", KeyId=pinned.key)["KeyMetadata"]
        state = metadata.get("KeyState")
        if state != "Enabled":
            raise KeyStoreError(f"KMS key {pinned.key} is {state}, not Enabled")
        alg_id = _BY_KEY_SPEC.get(metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec"))
        if alg_id is None or metadata.get("KeyUsage") != "SIGN_VERIFY":
            raise KeyStoreError(
                f"KMS key {pinned.key} ({metadata.get('KeySpec')}, {metadata.get('KeyUsage')}) "
                f"is not a signing key of a supported spec: {', '.join(_BY_KEY_SPEC)}"
            )
        algorithm = get_algorithm(alg_id)
        public = self._public(pinned.key, algorithm)
        return KmsKeyHandle(self, self._pinned_uri(pinned.key), metadata["Arn"], algorithm, public)

    def find(self, key_id: str) -> FoundKey | None:
        """The key behind ``alias/stellakeys/<key_id>``, or None."""
        try:
            metadata = self._call("DescribeKey", KeyId=KEY_ALIAS_PREFIX + key_id)["KeyMetadata"]
        except KeyStoreError as exc:
            if str(exc).startswith("no KMS key"):
                return None
            raise
        alg_id = _BY_KEY_SPEC.get(metadata.get("KeySpec") or metadata.get("CustomerMasterKeySpec"))
        if alg_id is None:
            raise KeyStoreError(f"KMS key {metadata['KeyId']} is not of a supported key spec")
        key_uuid: str = metadata["KeyId"]
        public = self._public(key_uuid, get_algorithm(alg_id))
        return FoundKey(key_id, self._pinned_uri(key_uuid), public)

    def list_keys(self) -> list[FoundKey]:
        aliases = self._call("ListAliases").get("Aliases", [])
        names = sorted(
            a["AliasName"][len(KEY_ALIAS_PREFIX) :]
            for a in aliases
            if a.get("AliasName", "").startswith(KEY_ALIAS_PREFIX)
        )
        return [f for n in names if (f := self.find(n)) is not None]

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
