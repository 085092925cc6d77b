"""The software key store: encrypted PKCS#8 files in a private directory.

Layout (POSIX only)::

    <home>/keys/<name>/            mode 0700
        store.json                 mode 0600: format, scrypt salt and parameters, check value
        <key_id>.pem               mode 0600: ENCRYPTED PRIVATE KEY block, then PUBLIC KEY block
        .tmp-<key_id>-<random>     a write in progress (or left by a crash); never read as a key

URIs: the store is ``software://<name>``; a key is pinned as
``software://<name>/<key_id>#SHA256:<hex>`` with the full fingerprint of its public key, so a
file later put under the same key id (restored from another backup, planted by someone with
write access) is refused instead of silently signing in the old key's name.

Encryption at rest. ``cryptography``'s ``BestAvailableEncryption`` writes PKCS#8 PBES2 with
AES-256-CBC but only 2,048 rounds of PBKDF2-HMAC-SHA256 (checked with cryptography 46-50),
far below what a guessable passphrase needs, and ``cryptography`` offers no knob for PKCS#8.
So the user's passphrase is first stretched with scrypt (N=2**17, r=8, p=1: 128 MiB, about
0.4 s) under a random per-store salt, and the hex of the 32-byte result is the PKCS#8
passphrase. The files stay standard PKCS#8 (``openssl pkey -passin pass:<hex>`` opens them
with the derived value), while each passphrase guess costs an attacker a full scrypt. scrypt
runs once per store per process; every key file still has its own PBKDF2 salt and IV.
``store.json`` keeps an HMAC of the derived key so a wrong passphrase is reported as such
before anything is encrypted under it.

Durability. Every file is written to a temp file in the same directory, fsynced, and then
*linked* (not renamed) to its final name: ``link`` fails if the name exists, which makes "never
overwrite a key" atomic even between processes, and a crash leaves either no key file or a
complete one. The directory is fsynced after the link so a reported key survives power loss.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, final

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from stellakeys._crashpoints import crash_point
from stellakeys.crypto import (
    Algorithm,
    PrivateKey,
    PublicKey,
    algorithms,
    load_private_key_pem,
    load_public_key_pem,
)
from stellakeys.errors import KeyIdentityError, KeyStoreError, StellaKeysError
from stellakeys.keystores._secrets import Secret, SecretSource
from stellakeys.keystores.ports import FoundKey, KeyStoreContext, PreparedKey

__all__ = ["SoftwareKeyHandle", "SoftwareKeyStore", "forget_passphrases"]

FORMAT = "stellakeys-software-store/1"
# Names of environment variables, not secrets.
PASSPHRASE_ENV = "STELLAKEYS_PASSPHRASE"  # noqa: S105
PASSPHRASE_FILE_ENV = "STELLAKEYS_PASSPHRASE_FILE"  # noqa: S105

#: scrypt cost for new stores (OWASP's first recommended setting); existing stores keep the
#: parameters written in their store.json.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
_CHECK_LABEL = b"stellakeys software store passphrase check v1"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_URI = re.compile(
    r"software://(?P<store>[^/#?]*)(?:/(?P<key>[^/#?]*))?(?:#(?P<fp>SHA256:[0-9a-f]{64}))?"
)
_KEY_SUFFIX = ".pem"
_TMP_PREFIX = ".tmp-"
#: Key files set aside by ``stellaops doctor --repair`` (an orphan with no intent): kept, not
#: deleted, but no longer a key (hidden name), so the key id can be used again.
_ORPHAN_PREFIX = ".orphan-"
_PRIVATE_BLOCK = re.compile(
    rb"-----BEGIN ENCRYPTED PRIVATE KEY-----\r?\n.*?-----END ENCRYPTED PRIVATE KEY-----\r?\n?",
    re.DOTALL,
)
_PUBLIC_BLOCK = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----\r?\n?", re.DOTALL
)


def _valid_name(kind: str, name: str) -> str:
    # Key ids and store names become file names: a strict alphabet rules out path traversal,
    # hidden files (our temp files start with a dot) and names that differ only by encoding.
    if not _NAME.fullmatch(name) or name.endswith(".tmp"):
        raise KeyStoreError(
            f"invalid {kind} {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new_file(directory: Path, name: str, content: bytes) -> bool:
    """Atomically create ``directory/name`` with ``content`` (mode 0600) unless it exists.

    Returns False, writing nothing, if the name is already taken. The temp file is written and
    fsynced before it is linked, so the final name only ever points at complete content.
    """
    tmp = directory / f"{_TMP_PREFIX}{name}-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may only remove bits; make the mode exact
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        crash_point("software-tmp-written")  # test-only: leaves a stale temp file
        try:
            os.link(tmp, directory / name)
        except FileExistsError:
            return False
        _fsync_dir(directory)
        return True
    finally:
        # The temp name is ours alone (random suffix, O_EXCL); after the link the data lives on
        # under the final name.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# Derived keys for the life of the process, keyed by an HMAC under a per-process random key
# (so the table holds no fast hash of a passphrase that would outlive the process). Why: the
# facade opens one store object per pinned URI, and one scrypt (0.4 s, 128 MiB) per key and
# process is a cost without a security benefit -- the derived key is in memory either way.
_PROCESS_KEY = secrets.token_bytes(32)
_DERIVED: dict[bytes, bytes] = {}
_DERIVED_LOCK = threading.Lock()


def _derive_cached(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    tag = hmac.new(_PROCESS_KEY, digestmod=hashlib.sha256)
    for part in (salt, b"%d,%d,%d" % (n, r, p), passphrase):
        tag.update(len(part).to_bytes(4, "big") + part)
    slot = tag.digest()
    with _DERIVED_LOCK:
        cached = _DERIVED.get(slot)
    if cached is not None:
        return cached
    derived = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase).hex().encode()
    with _DERIVED_LOCK:
        _DERIVED[slot] = derived
    return derived


def forget_passphrases() -> None:
    """Drop every derived key this process holds (open handles keep their decrypted keys)."""
    with _DERIVED_LOCK:
        _DERIVED.clear()


@final
class SoftwareKeyHandle:
    """A decrypted key, cached for the life of the process. Never written anywhere."""

    __slots__ = ("_private", "key_id", "uri")

    def __init__(self, uri: str, key_id: str, private: PrivateKey) -> None:
        self.uri = uri
        self.key_id = key_id
        self._private = private

    @property
    def algorithm(self) -> Algorithm:
        return self._private.algorithm

    def sign(self, data: bytes, /) -> bytes:
        return self._private.sign(data)

    def public_key(self) -> PublicKey:
        return self._private.public_key()

    def __repr__(self) -> str:
        return f"<SoftwareKeyHandle {self.uri}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key handles cannot be pickled")


class SoftwareKeyStore:
    """Keys encrypted under one passphrase in ``<home>/keys/<name>/``.

    ``SoftwareKeyStore(directory, passphrase_source)`` for embedding; ``from_uri`` for
    ``software://<name>`` with the passphrase from ``$STELLAKEYS_PASSPHRASE``,
    ``$STELLAKEYS_PASSPHRASE_FILE`` or the context's prompt.
    """

    def __init__(self, directory: Path, passphrase: SecretSource, *, name: str = "") -> None:
        self.directory = Path(directory)
        self.name = name or self.directory.name
        self._passphrase = passphrase
        #: The scrypt-derived PKCS#8 passphrase, once known to be right. Memory only.
        self._derived: bytes | None = None
        self._lock = threading.Lock()
        if self.directory.exists():
            self._check_permissions()

    @classmethod
    def from_uri(cls, uri: str, context: KeyStoreContext) -> SoftwareKeyStore:
        """``software://<name>`` (a pinned key URI names its store the same way)."""
        match = _URI.fullmatch(uri)
        if match is None:
            raise KeyStoreError(
                f"not a software key store URI: {uri!r}; expected software://<name>"
            )
        name = _valid_name("key store name", match["store"] or "default")
        source = SecretSource(
            f"passphrase for software key store {name!r}",
            PASSPHRASE_ENV,
            PASSPHRASE_FILE_ENV,
            prompt=context.prompt,
        )
        return cls(Path(context.home) / "keys" / name, source, name=name)

    def __repr__(self) -> str:
        return f"<SoftwareKeyStore software://{self.name} at {self.directory}>"

    # --- permissions ----------------------------------------------------------------------

    def _refuse(self, what: Path, st: os.stat_result, fix: str) -> NoReturn:
        raise KeyStoreError(
            f"refusing software key store {self.name!r}: {what} is accessible by group or "
            f"others (mode {stat.S_IMODE(st.st_mode):o}); run '{fix}'"
        )

    def _check_permissions(self) -> None:
        """Refuse a store whose directory or files others could read (or swap)."""
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise KeyStoreError(f"software key store path {self.directory} is not a directory")
        if st.st_uid != os.geteuid():
            raise KeyStoreError(
                f"software key store directory {self.directory} belongs to uid {st.st_uid}, "
                f"not to this user (uid {os.geteuid()})"
            )
        if st.st_mode & 0o077:
            self._refuse(self.directory, st, f"chmod 700 {self.directory}")
        for entry in os.scandir(self.directory):
            est = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(est.st_mode):
                raise KeyStoreError(
                    f"refusing software key store {self.name!r}: {entry.path} is a symlink"
                )
            if est.st_mode & 0o077:
                self._refuse(Path(entry.path), est, f"chmod 600 {entry.path}")

    def _ensure_directory(self) -> None:
        if not self.directory.exists():
            self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                self.directory.mkdir(mode=0o700)
            except FileExistsError:
                pass  # another process created it first; the checks below apply to it too
            else:
                os.chmod(self.directory, 0o700)
                _fsync_dir(self.directory.parent)
        self._check_permissions()

    def _read_private_file(self, path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KeyStoreError(f"refusing {path}: it is a symlink") from None
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                self._refuse(path, st, f"chmod 600 {path}")
            with os.fdopen(os.dup(fd), "rb") as handle:
                return handle.read()
        finally:
            os.close(fd)

    # --- passphrase -----------------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            raw = self._read_private_file(self.directory / "store.json")
        except FileNotFoundError:
            return None
        try:
            meta = json.loads(raw)
            kdf = meta["kdf"]
            if meta["format"] != FORMAT or kdf["name"] != "scrypt":
                raise ValueError(meta.get("format"))
            base64.b64decode(kdf["salt"], validate=True)
            int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
            bytes.fromhex(meta["check"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(
                f"software key store {self.name!r}: store.json is not a {FORMAT} file ({exc})"
            ) from None
        return dict(meta)

    def _create_meta(self, secret: Secret) -> tuple[dict[str, Any], bytes | None]:
        """Write store.json for a new store (first generate). Loses gracefully to a racer.

        Returns the metadata in force and, if ours won, the derived key.
        """
        salt = secrets.token_bytes(16)
        derived = self._derive(secret.reveal(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        meta: dict[str, Any] = {
            "format": FORMAT,
            "kdf": {
                "name": "scrypt",
                "salt": base64.b64encode(salt).decode("ascii"),
                "n": SCRYPT_N,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
            },
            "pkcs8": "PBES2 (cryptography BestAvailableEncryption); passphrase = hex(scrypt)",
            "check": self._check_value(derived),
        }
        body = (json.dumps(meta, indent=2) + "\n").encode()
        if _link_new_file(self.directory, "store.json", body):
            return meta, derived
        # Another process created the store between our look and our link: use its salt.
        existing = self._read_meta()
        assert existing is not None
        return existing, None

    @staticmethod
    def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        return _derive_cached(passphrase.encode("utf-8"), salt, n, r, p)

    @staticmethod
    def _check_value(derived: bytes) -> str:
        return hmac.new(derived, _CHECK_LABEL, hashlib.sha256).hexdigest()

    def _key_passphrase(self, *, creating: bool) -> bytes:
        """The derived PKCS#8 passphrase, asking for the user's passphrase at most once."""
        with self._lock:
            if self._derived is not None:
                return self._derived
            if creating:
                self._ensure_directory()
            meta = self._read_meta()
            secret: Secret | None = None
            if meta is None:
                if not creating:
                    raise KeyStoreError(
                        f"software key store {self.name!r} has no keys yet ({self.directory})"
                    )
                secret = self._passphrase.read(confirm=True)
                meta, derived = self._create_meta(secret)
                if derived is not None:
                    self._derived = derived
                    return derived
            if secret is None:
                secret = self._passphrase.read()
            kdf = meta["kdf"]
            derived = self._derive(
                secret.reveal(),
                base64.b64decode(kdf["salt"]),
                int(kdf["n"]),
                int(kdf["r"]),
                int(kdf["p"]),
            )
            if not hmac.compare_digest(self._check_value(derived), meta["check"]):
                raise KeyStoreError(
                    f"wrong passphrase for software key store {self.name!r} (from {secret.origin})"
                )
            self._derived = derived
            return derived

    # --- the port -------------------------------------------------------------------------

    def _pinned_uri(self, key_id: str, public: PublicKey) -> str:
        return f"software://{self.name}/{key_id}#{public.fingerprint}"

    def generate(
        self,
        algorithm: Algorithm,
        key_id: str,
        *,
        prepared: Callable[[PreparedKey], None] | None = None,
    ) -> SoftwareKeyHandle:
        _valid_name("key id", key_id)
        supported = algorithms()
        if algorithm not in supported:
            raise KeyStoreError(
                f"the software key store cannot generate {algorithm.id!r}; supported: "
                + ", ".join(a.id for a in supported)
            )
        path = self.directory / (key_id + _KEY_SUFFIX)
        if path.exists():
            # Checked before the passphrase is asked for; the link below is the real guard.
            raise KeyStoreError(f"key {key_id!r} already exists in software://{self.name}")
        passphrase = self._key_passphrase(creating=True)
        try:
            private = algorithm.generate()
        except StellaKeysError as exc:
            raise KeyStoreError(
                f"the software key store cannot generate {algorithm.id!r} here: {exc}"
            ) from None
        content = private.to_encrypted_pem(passphrase) + private.public_key().to_pem().encode()
        if prepared is not None:
            # The key exists only in memory yet: let the caller record its public key (the
            # intent), so a crash after the link below leaves a key that can be recognised.
            prepared(
                PreparedKey(self._pinned_uri(key_id, private.public_key()), private.public_key())
            )
        if not _link_new_file(self.directory, path.name, content):
            raise KeyStoreError(f"key {key_id!r} already exists in software://{self.name}")
        return SoftwareKeyHandle(self._pinned_uri(key_id, private.public_key()), key_id, private)

    def open(self, uri: str) -> SoftwareKeyHandle:
        match = _URI.fullmatch(uri)
        if match is None or not match["key"] or not match["fp"]:
            raise KeyStoreError(
                f"not a pinned software key URI: {uri!r}; expected "
                "software://<store>/<key_id>#SHA256:<hex> as returned by generate()"
            )
        if (match["store"] or "default") != self.name:
            raise KeyStoreError(f"{uri} is not in software key store {self.name!r}")
        key_id = _valid_name("key id", match["key"])
        path = self.directory / (key_id + _KEY_SUFFIX)
        try:
            content = self._read_private_file(path)
        except FileNotFoundError:
            raise KeyStoreError(f"no key {key_id!r} in software://{self.name}") from None
        private_pem = _PRIVATE_BLOCK.search(content)
        public_pem = _PUBLIC_BLOCK.search(content)
        if private_pem is None or public_pem is None:
            raise KeyStoreError(f"{path} is not a stellakeys key file")
        try:
            public = load_public_key_pem(public_pem.group(0))
        except StellaKeysError as exc:
            raise KeyStoreError(f"{path}: cannot read its public key: {exc}") from None
        # Compare before decrypting: a substituted file is refused without a passphrase.
        if not hmac.compare_digest(public.fingerprint, match["fp"]):
            # It was replaced after the URI was issued (restored from another backup, planted).
            raise KeyIdentityError(
                key_id, match["fp"], public.fingerprint, f"software://{self.name}"
            )
        passphrase = self._key_passphrase(creating=False)
        try:
            private = load_private_key_pem(private_pem.group(0), passphrase)
        except StellaKeysError as exc:
            raise KeyStoreError(f"{path}: cannot decrypt the private key: {exc}") from None
        if private.public_key() != public:
            raise KeyStoreError(f"{path}: private and public key do not match")
        return SoftwareKeyHandle(uri, key_id, private)

    def key_ids(self) -> list[str]:
        """The ids of complete key files (temp files of writes in progress are not keys)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(
            n[: -len(_KEY_SUFFIX)] for n in names if n.endswith(_KEY_SUFFIX) and n[0] != "."
        )

    def inventory(self) -> dict[str, str]:
        """key id -> pinned URI, read from the public key blocks (no passphrase needed).

        For listings and recovery; a key record's own pinned URI stays the authority.
        """
        found: dict[str, str] = {}
        for key_id in self.key_ids():
            path = self.directory / (key_id + _KEY_SUFFIX)
            block = _PUBLIC_BLOCK.search(self._read_private_file(path))
            if block is None:
                raise KeyStoreError(f"{path} is not a stellakeys key file")
            try:
                public = load_public_key_pem(block.group(0))
            except StellaKeysError as exc:
                raise KeyStoreError(f"{path}: cannot read its public key: {exc}") from None
            found[key_id] = self._pinned_uri(key_id, public)
        return found

    def _found(self, key_id: str) -> FoundKey | None:
        path = self.directory / (key_id + _KEY_SUFFIX)
        try:
            content = self._read_private_file(path)
        except FileNotFoundError:
            return None
        block = _PUBLIC_BLOCK.search(content)
        if block is None:
            raise KeyStoreError(f"{path} is not a stellakeys key file")
        try:
            public = load_public_key_pem(block.group(0))
        except StellaKeysError as exc:
            raise KeyStoreError(f"{path}: cannot read its public key: {exc}") from None
        return FoundKey(key_id, self._pinned_uri(key_id, public), public)

    def find(self, key_id: str) -> FoundKey | None:
        """The key file of ``key_id`` (its public block; no passphrase), or None."""
        return self._found(_valid_name("key id", key_id))

    def list_keys(self) -> list[FoundKey]:
        return [f for k in self.key_ids() if (f := self._found(k)) is not None]

    def temp_files(self, min_age_seconds: float = 0.0) -> list[Path]:
        """Temp files of writes that did not finish (a crash), at least this old by mtime.

        A live writer's temp file is at most seconds old; ``stellaops doctor`` leaves younger
        ones alone by default."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        # mtime is the file system's clock, not the core's: this is an adapter inspecting files.
        limit = time.time() - min_age_seconds
        return sorted(
            Path(e.path)
            for e in entries
            if e.name.startswith(_TMP_PREFIX) and e.stat(follow_symlinks=False).st_mtime <= limit
        )

    def remove_temp_file(self, path: Path) -> None:
        if path.parent != self.directory or not path.name.startswith(_TMP_PREFIX):
            raise KeyStoreError(f"{path} is not a temp file of software://{self.name}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _fsync_dir(self.directory)

    def quarantine(self, key_id: str) -> Path:
        """Set an orphan key file aside under a hidden name (kept, never deleted): the key id
        is free again. Returns the new path."""
        found = self.find(key_id)
        if found is None:
            raise KeyStoreError(f"no key {key_id!r} in software://{self.name}")
        source = self.directory / (key_id + _KEY_SUFFIX)
        digest = found.public_key.fingerprint.split(":", 1)[1][:16]
        target = self.directory / f"{_ORPHAN_PREFIX}{key_id}-{digest}{_KEY_SUFFIX}"
        # FileExistsError: set aside before (same key, same name); just drop the key id's name.
        with contextlib.suppress(FileExistsError):
            os.link(source, target)
        os.unlink(source)
        _fsync_dir(self.directory)
        return target

    def close(self) -> None:
        with self._lock:
            self._derived = None
