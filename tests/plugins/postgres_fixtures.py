"""PostgreSQL fixtures: throwaway clusters of Debian's `postgresql` server (no mocks, no containers).

- `PostgresServer(host, port, wrap, parent)`: `initdb` in a fresh folder (under /tmp or `parent`),
  `pg_ctl start` on `host:port` (TCP with scram-sha-256 passwords; the superuser only over the
  cluster's own Unix socket), `stop()` removes everything. As root the server runs as the `postgres` user (initdb
  refuses root); `wrap` prefixes the start command, e.g. `ip netns exec NS` for a test host.
- `postgres_server` (session): one server on a free 127.0.0.1 port shared by the session's tests.

The server binaries come from /usr/lib/postgresql/<version>/bin (`.ci/run` installs the package).
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

SUPERUSER = "postgres"


def server_bin_dir() -> Path:
    """The newest installed server's bin folder (initdb, pg_ctl)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        pytest.fail("PostgreSQL server not installed: apt-get install -y postgresql (.ci/run does)")
    return Path(found[-1]).parent


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One throwaway PostgreSQL cluster; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, wrap: tuple[str, ...] = (),
                 parent: Path | None = None):
        self.host = host
        self.parent = parent  # where the cluster's folder is made (default: the system temp dir)
        self.port = port or free_port(host)
        self.wrap = tuple(wrap)
        self.root: Path | None = None
        self.bin = server_bin_dir()
        self.owner = "postgres" if os.geteuid() == 0 else None  # None: the current (non-root) user

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.owner, "--", *argv] if self.owner else argv

    def start(self, timeout: int = 60) -> "PostgresServer":
        self.root = Path(tempfile.mkdtemp(prefix="vggt-pg-", dir=self.parent))
        if self.owner:
            user = pwd.getpwnam(self.owner)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        data, self.socket_dir = self.root / "data", self.root / "sock"
        subprocess.run(self._as_owner(["mkdir", str(self.socket_dir)]), check=True)
        subprocess.run(self._as_owner([str(self.bin / "initdb"), "-D", str(data), "-U", SUPERUSER, "-E", "UTF8",
                                       "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"]),
                       check=True, capture_output=True, text=True)
        with (data / "pg_hba.conf").open("a") as hba:  # initdb allows TCP from loopback only
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        options = (f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories={self.socket_dir} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=60")
        pg_ctl = [str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-w", "-t",
                  str(timeout), "-o", options, "start"]
        started = subprocess.run([*self.wrap, *self._as_owner(pg_ctl)], capture_output=True, text=True)
        if started.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            self.stop()
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {log[-2000:]}")
        return self

    def sql(self, statement: str, db: str = "postgres") -> str:
        """Run SQL as the superuser over the Unix socket; returns psql's unaligned output."""
        result = subprocess.run(
            self._as_owner(["psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", db,
                            "-v", "ON_ERROR_STOP=1", "-Atc", statement]),
            capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"psql: {result.stderr.strip()}")
        return result.stdout.strip()

    def add_user(self, name: str, password: str, *databases: str, createdb: bool = False) -> None:
        """A login role with a password, owning `databases` (created)."""
        escaped = password.replace("'", "''")
        self.sql(f"CREATE ROLE \"{name}\" LOGIN {'CREATEDB ' if createdb else ''}PASSWORD '{escaped}'")
        for db in databases:
            self.sql(f"CREATE DATABASE \"{db}\" OWNER \"{name}\"")

    def url(self, user: str, db: str, password: str | None = None) -> str:
        secret = f":{quote(password, safe='')}" if password is not None else ""
        return f"postgresql://{quote(user, safe='')}{secret}@{self.host}:{self.port}/{db}"

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                           "stop"]), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on a free loopback port for the whole session; removed at the end."""
    server = PostgresServer().start()
    yield server
    server.stop()
