"""A throwaway PostgreSQL cluster on a free loopback port (tests, `make bench`, `make soak`).

`Cluster.create()` runs Debian's `initdb` into a fresh temporary directory and `start()`s the
server on 127.0.0.1 only (Unix socket in the data directory, no TCP on any other address).
PostgreSQL refuses to run as root: when this process is root the cluster belongs to the
`postgres` system user the Debian package creates (else `nobody`), and every server command
runs as that user through `runuser`. `remove()` stops the server and deletes the directory.

Authentication is `trust` for 127.0.0.1 only: the cluster lives for one test session on
loopback; production uses scram-sha-256 and TLS (docs/stores.md).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StackError
from .ports import free_port

SUPERUSER = "zt"


def bindir() -> Path:
    """Where Debian's server binaries live (`/usr/lib/postgresql/<major>/bin`), newest first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise StackError("PostgreSQL is not installed", "run `make bootstrap` (apt: postgresql)")


def _owner() -> str | None:
    """The unprivileged user to run the server as (None: this process is not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise StackError("no unprivileged user to run PostgreSQL as", "create the `postgres` user")


@dataclass
class Cluster:
    root: Path
    port: int
    user: str | None
    settings: dict[str, str] = field(default_factory=dict)
    bin: Path = field(default_factory=bindir)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def create(cls, settings: dict[str, str] | None = None, port: int | None = None) -> Cluster:
        """initdb into a new temporary directory (owned by the unprivileged user)."""
        user = _owner()
        root = Path(tempfile.mkdtemp(prefix="zt-pg-"))
        cluster = cls(root, port or free_port(), user, dict(settings or {}))
        try:
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chmod(root, 0o700)
            cluster._run(
                str(cluster.bin / "initdb"),
                "-D",
                str(cluster.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
        except BaseException:
            cluster.remove()
            raise
        return cluster

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root
        )
        if done.returncode != 0:
            raise StackError(
                f"{Path(argv[0]).name} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-2000:]}",
                f"server log: {self.log}",
            )
        return done

    def start(self, timeout: float = 60) -> None:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.data),
            "max_connections": "200",
            **self.settings,
        }
        flags = " ".join(f"-c {k}={v}" for k, v in options.items())
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            flags,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: abort sessions, clean shutdown; `immediate`: a crash)."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._run(
            str(self.bin / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-c",
            sql,
        )
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def wait_accepting(cluster: Cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            cluster.psql("SELECT 1")
            return
        except StackError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
