"""Where state lives and how it is configured: home directory, signer.yaml, database URL.

Resolution order, most specific first: explicit argument (CLI flag) > environment variable >
file in the home > built-in default.

* home: ``--home`` > ``STELLAKEYS_HOME`` > the platform's user data dir (``platformdirs``).
* signer config: ``--config`` > ``STELLAKEYS_CONFIG`` > ``<home>/signer.yaml`` > the runbook's
  five profiles on the software key store.
* database: ``--database-url`` > ``STELLAKEYS_DATABASE_URL`` > ``database.url`` in the signer
  config > SQLite at ``<home>/stellakeys.db``.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from stellakeys.errors import ConfigError
from stellakeys.profiles import SignerConfig

__all__ = ["Settings", "load_settings", "load_yaml", "resolve_home"]

ENV_HOME = "STELLAKEYS_HOME"
ENV_CONFIG = "STELLAKEYS_CONFIG"
ENV_DATABASE_URL = "STELLAKEYS_DATABASE_URL"
ENV_ACTOR = "STELLAKEYS_ACTOR"


def resolve_home(home: str | Path | None = None) -> Path:
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("stellakeys", appauthor=False))


def load_yaml(path: Path) -> Any:
    """A YAML document (safe loader only), or ConfigError naming the file and the problem."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML") from None


def default_actor() -> str:
    env = os.environ.get(ENV_ACTOR)
    if env:
        return env
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@attrs.frozen
class Settings:
    home: Path
    signer: SignerConfig
    database_url: str | None
    actor: str
    #: The whole parsed configuration document, for sections other modules own
    #: (``ceremonies``, ``notifications``, ...).
    document: Mapping[str, Any] = attrs.field(factory=dict)


def load_settings(
    home: str | Path | None = None,
    config_path: str | Path | None = None,
    database_url: str | None = None,
    actor: str | None = None,
) -> Settings:
    resolved_home = resolve_home(home)
    path: Path | None = None
    if config_path is not None:
        path = Path(config_path)
    elif os.environ.get(ENV_CONFIG):
        path = Path(os.environ[ENV_CONFIG])
    elif (resolved_home / "signer.yaml").exists():
        path = resolved_home / "signer.yaml"
    document: Any = load_yaml(path) if path is not None else None
    if document is not None and not isinstance(document, Mapping):
        raise ConfigError(f"{path}: the document must be a mapping")
    signer = SignerConfig.from_dict(document) if document and "signer" in document else None
    url = database_url or os.environ.get(ENV_DATABASE_URL)
    if url is None and document:
        db = document.get("database")
        if isinstance(db, Mapping) and isinstance(db.get("url"), str):
            url = db["url"]
    return Settings(
        home=resolved_home,
        signer=signer or SignerConfig.from_dict(None),
        database_url=url or None,
        actor=actor or default_actor(),
        document=document or {},
    )
