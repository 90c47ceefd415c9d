"""A throwaway PostgreSQL cluster for tests: ``postgres_server``, one per test session.

The cluster lives in a fresh folder under the system temp dir with trust auth, listens on
127.0.0.1 only, and is stopped (and its folder removed) at the end of the session, also when
tests fail. Run as root, the server binaries run as the ``postgres`` OS user (initdb refuses
root). Skipped only when the server binaries are not installed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text

from router.telemetry import VERSION_TABLE, metadata
from serving.processes import free_port

PG_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"),)
DATABASE = "decisions"
# pg_ctl's own wait for the server to start or stop (seconds).
PG_CTL_WAIT_S = 60


def _pg_bin(name: str) -> str | None:
    for folder in PG_BIN_DIRS:
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


@dataclass
class PostgresServer:
    """A running cluster: ``url`` names database ``decisions`` (SQLAlchemy, psycopg 3)."""

    pg_ctl: str
    data_dir: Path
    socket_dir: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True,
                              timeout=PG_CTL_WAIT_S + 30, check=False)
        if done.returncode != 0:
            log = self.data_dir.parent / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}"
                               f"{done.stderr}{tail}")

    def init(self, initdb: str) -> None:
        self._run(initdb, "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                   # Throwaway data: skip the fsyncs, they only slow the tests.
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run(self.pg_ctl, "-D", str(self.data_dir), "-o", options,
                  "-l", str(self.data_dir.parent / "server.log"), "-w", "-t",
                  str(PG_CTL_WAIT_S), "start")

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "-t",
                  str(PG_CTL_WAIT_S), "stop")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()


def _server(root: Path) -> tuple[PostgresServer, str]:
    """(the server to start in ``root``, the initdb binary); skips without the binaries."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in "
                    f"{', '.join(map(str, PG_BIN_DIRS))} or on PATH")
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, but there is no 'postgres' OS user to run initdb as")
        if runuser is None:
            pytest.fail("running as root, but runuser (to run initdb as postgres) is missing")
        as_user = [runuser, "-u", "postgres", "--"]
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(pg_ctl=pg_ctl, data_dir=root / "data", socket_dir=root,
                            port=free_port(), as_user=as_user)
    return server, initdb


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running throwaway PostgreSQL with an empty database ``decisions``."""
    # mkdtemp, not tmp_path_factory: pytest's base temp folder is root-only (0700).
    root = Path(tempfile.mkdtemp(prefix="tier-router-pg-"))
    server: PostgresServer | None = None
    try:
        server, initdb = _server(root)
        server.init(initdb)
        server.start()
        with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres "
                             f"dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        yield server
    finally:
        if server is not None and server.running():
            with contextlib.suppress(subprocess.SubprocessError):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)


def sqlite_url(tmp_path: Path, query: str = "") -> str:
    """A decision log's SQLite URL under ``tmp_path/var`` (the folder is not created)."""
    return f"sqlite:///{tmp_path / 'var' / 'decisions.sqlite'}{query}"


def fresh_pg_url(server: PostgresServer) -> str:
    """The server's database with no ``decisions`` table nor its schema version (tests share
    the cluster)."""
    engine = create_engine(server.url)
    metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    engine.dispose()
    return server.url
