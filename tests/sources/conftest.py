"""A throwaway PostgreSQL server for the SQL historian tests, started and stopped by the tests.

The server runs from the installed PostgreSQL binaries (Debian: /usr/lib/postgresql/<v>/bin,
which is not on PATH) in a temporary directory: its own data directory, a Unix socket in that
directory, TCP on 127.0.0.1 only, on a free port. PostgreSQL refuses to run as root, so as root
it runs as the `postgres` system user (created by the Debian package).

Without PostgreSQL binaries the PostgreSQL tests skip on a developer machine, but fail when
the environment variable CI is set: CI must never pass by silently skipping them.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "batchtwin"
PG_PASSWORD = "batchtwin-test-pw"
SERVER_USER = "postgres"  # the system user that runs the server when the tests run as root
_databases = itertools.count(1)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(message: str):
    if _in_ci():
        pytest.fail(
            f"{message} (CI is set, so the PostgreSQL tests must not be skipped;"
            " .ci/run installs PostgreSQL)",
            pytrace=False,
        )
    pytest.skip(message)


def pg_bindir() -> Path | None:
    """Directory holding initdb, pg_ctl and postgres: PATH first, then the Debian and RHEL
    layouts."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        real = Path(on_path).resolve()  # not a wrapper script's directory
        if real.with_name("initdb").exists() and real.with_name("postgres").exists():
            return real.parent

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path))

    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") + glob.glob(
        "/usr/pgsql-*/bin/pg_ctl"
    )
    for pg_ctl in sorted(candidates, key=version, reverse=True):
        if (
            Path(pg_ctl).with_name("initdb").exists()
            and Path(pg_ctl).with_name("postgres").exists()
        ):
            return Path(pg_ctl).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    as_user: list[str]  # command prefix that runs a program as the server's user ([] when not root)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [*self.as_user, str(self.bindir / args[0]), *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def admin_connect(self):
        import psycopg

        return psycopg.connect(
            host=str(self.root),
            port=self.port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def url(self, database: str, password: str = PG_PASSWORD) -> str:
        return f"postgresql+psycopg://{PG_USER}:{password}@127.0.0.1:{self.port}/{database}"


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(
            f"running as root, but there is no {SERVER_USER!r} system user"
            " to run the PostgreSQL server as",
            pytrace=False,
        )
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVER_USER, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    pytest.fail(
        "running as root, but neither runuser nor setpriv is available"
        " to drop to the postgres user",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of our own, with role `batchtwin` (password auth over TCP); stopped at
    the end."""
    bindir = pg_bindir()
    if bindir is None:
        _unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH"
            " or under /usr/lib/postgresql/*/bin; "
            "install them with `apt-get install -y postgresql`"
        )
    as_user = _as_server_user()
    # a short path: the Unix socket path must stay under ~100 characters
    root = Path(
        tempfile.mkdtemp(prefix="batchtwin-pg-", dir="/tmp" if os.path.isdir("/tmp") else None)
    )
    if as_user:  # the server's user owns the whole directory (data, socket, log)
        pw = pwd.getpwnam(SERVER_USER)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(bindir, root, _free_port(), as_user)
    started = False
    try:
        init = server.run(
            "initdb",
            "-D",
            str(server.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        if init.returncode != 0:
            pytest.fail(
                f"initdb failed ({shlex.join(init.args)}):\n{init.stdout}{init.stderr}",
                pytrace=False,
            )
        # the server's own time zone is deliberately not UTC: `timestamp without time zone`
        # holding UTC must not depend on it
        options = (
            f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c timezone=America/New_York"
        )
        start = server.run(
            "pg_ctl",
            "-D",
            str(server.data),
            "-l",
            str(server.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )
        started = start.returncode == 0
        if not started:
            log = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
            pytest.fail(
                f"PostgreSQL did not start ({shlex.join(start.args)}):\n"
                f"{start.stdout}{start.stderr}\n{log}",
                pytrace=False,
            )
        with server.admin_connect() as con:
            con.execute(f"CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'")
        yield server
    finally:
        if started:
            server.run(
                "pg_ctl", "-D", str(server.data), "-m", "fast", "-w", "-t", "60", "stop", timeout=90
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """A fresh, empty database owned by `batchtwin` for one test; its SQLAlchemy URL (with the
    password)."""
    name = f"t{next(_databases)}"
    with postgres_server.admin_connect() as con:
        con.execute(f'CREATE DATABASE "{name}" OWNER {PG_USER}')
    yield postgres_server.url(name)
    with postgres_server.admin_connect() as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
