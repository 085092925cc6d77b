"""A throwaway PostgreSQL server for tests and benchmarks: ``initdb`` in a temporary
directory, ``pg_ctl start`` on a free port with the unix socket in that directory (no TCP),
``pg_ctl stop`` and removal at the end.

The server binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``,
newest version first) or ``$STELLAKEYS_PG_BIN``. ``initdb`` refuses to run as root, so as root
the cluster belongs to the ``postgres`` user (created by the Debian package), or to a system
user created for the purpose; the client connects over the socket as the cluster's
``postgres`` superuser with trust authentication.

No pytest here, so ``benchmarks/bench_postgres.py`` can use it too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["MISSING", "PostgresServer", "find_bin_dir"]

MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian package postgresql"
    " (or set STELLAKEYS_PG_BIN to the directory holding pg_ctl)"
)
_SERVICE_USER = "stellakeys-pg"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_bin_dir() -> Path | None:
    env = os.environ.get("STELLAKEYS_PG_BIN")
    candidates = [env] if env else []
    candidates += sorted(
        (os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")),
        key=_version_key,
        reverse=True,
    )
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(os.path.dirname(which))
    for c in candidates:
        if c and (Path(c) / "pg_ctl").exists() and (Path(c) / "initdb").exists():
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_user() -> str:
    """The account the server runs as when we are root."""
    for name in ("postgres", _SERVICE_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _SERVICE_USER],
        check=True,
        capture_output=True,
    )
    return _SERVICE_USER


class PostgresServer:
    def __init__(self, *, durable: bool = False, settings: dict[str, str] | None = None) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(MISSING)
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="stellakeys-pg-"))
        self.data = self.base / "data"
        self.port = _free_port()
        self._prefix: list[str] = []
        try:
            self._start(durable, settings or {})
        except BaseException:
            self.stop()
            raise

    def _start(self, durable: bool, settings: dict[str, str]) -> None:
        if os.geteuid() == 0:
            user = _service_user()
            shutil.chown(self.base, user)
            self._prefix = ["runuser", "-u", user, "--"]
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.base}'",
            "port": str(self.port),
            "max_connections": "200",
        }
        if not durable:
            # A throwaway cluster: crash safety of the OS is not what the tests exercise (a
            # killed backend or client is, and that does not need fsync).
            options |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        options |= settings
        with open(self.data / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            for k, v in options.items():
                conf.write(f"{k} = {v}\n")
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            [*self._prefix, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.base}&port={self.port}"

    def create_database(self, name: str) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            for _ in range(3):
                shutil.rmtree(self.base, ignore_errors=True)
                if not self.base.exists():
                    break
                time.sleep(0.1)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_TABLES = (
    "signer.key_intents, signer.ceremony_policy, signer.ceremony_approvals, signer.ceremonies,"
    " signer.proof_timestamps, signer.feed_versions, signer.proof_subject_keys,"
    " signer.proofs_unindexed, signer.proofs,"
    " signer.key_audit_log, signer.key_history, signer.trust_anchors, signer.keys"
)


def truncate(url: str) -> None:
    """Empty every data table. The schema's triggers refuse TRUNCATE of the audit log, keys,
    anchors and history (they are append-only), so this runs as a replication session, where
    ordinary triggers do not fire (superuser only: a test-only escape hatch)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(f"TRUNCATE {_TABLES} RESTART IDENTITY")


PGBOUNCER_MISSING = "pgbouncer not found: install Debian package pgbouncer"


class PgBouncer:
    """Debian's ``pgbouncer`` in front of a :class:`PostgresServer`, in transaction pooling
    mode, listening on 127.0.0.1 (a free port) and reaching the server over its unix socket.

    Clients authenticate to PgBouncer with ``trust`` as ``postgres`` (listed in its auth file)
    and PgBouncer logs in to the server as that user. PgBouncer refuses to run as root, so as
    root it runs as the server's account, like the server."""

    def __init__(self, server: PostgresServer, *, pool_size: int = 20) -> None:
        binary = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
        )
        if binary is None:
            raise RuntimeError(PGBOUNCER_MISSING)
        self.server = server
        self.port = _free_port()
        # One directory per bouncer: a session may start several (one per test module).
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-", dir=server.base))
        conf = self.dir / "pgbouncer.ini"
        (self.dir / "users.txt").write_text('"postgres" ""\n', encoding="utf-8")
        conf.write_text(
            "[databases]\n"
            f"* = host={server.base} port={server.port} user=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            "server_reset_query =\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n",
            encoding="utf-8",
        )
        if server._prefix:
            shutil.chown(self.dir, server._prefix[2])
        self._proc = subprocess.Popen(
            [*server._prefix, binary, str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = self.dir / "pgbouncer.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start: {tail}") from None
                time.sleep(0.05)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def url_for(self, direct_url: str) -> str:
        """The PgBouncer URL of the database ``direct_url`` names."""
        import psycopg

        return self.url(psycopg.conninfo.conninfo_to_dict(direct_url)["dbname"])

    def stop(self) -> None:
        pidfile = self.dir / "pgbouncer.pid"
        if pidfile.exists():
            # runuser does not pass signals on to pgbouncer: signal pgbouncer itself. SIGKILL:
            # a throwaway bouncer has nothing to save, and its SIGTERM shutdown takes ~2 s
            # (a fresh bouncer per conformance test would add minutes to a suite run).
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), 9)
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
