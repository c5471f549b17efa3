"""A real PostgreSQL for tests: started on 127.0.0.1 on a free port in a temporary folder, stopped after the session.

The server's binaries come from PATH, a Debian-style /usr/lib/postgresql/<version>/bin, or the `pgserver` wheel.
PostgreSQL refuses to run as root, so under root it runs as the unprivileged `postgres` user when there is one,
else `nobody`. Without binaries the tests that need it are skipped, saying how to get them.
"""

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port

logger = logging.getLogger(__name__)
HOW_TO_GET = "install it (`apt-get install postgresql`) or `pip install pgserver`"


def find_bin_dir() -> Path | None:
    "The folder holding `initdb`, `pg_ctl` and `postgres`: PATH, then /usr/lib/postgresql/*/bin, then the pgserver wheel."
    names = ("initdb", "pg_ctl", "postgres")
    candidates = [Path(p).resolve().parent for p in [shutil.which("initdb")] if p]
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True
    )
    try:
        import pgserver._commands as pgserver_commands  # the wheel ships a whole PostgreSQL

        candidates.append(Path(pgserver_commands.POSTGRES_BIN_PATH))
    except Exception:  # not installed, or broken: there may be other candidates
        pass
    return next((d for d in candidates if all(os.access(d / n, os.X_OK) for n in names)), None)


def server_user() -> str | None:
    "The user the server runs as: None (ourselves) unless we are root, then `postgres` if it exists, else `nobody`."
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.fail("running as root, and there is neither a `postgres` nor a `nobody` user to run PostgreSQL as")


def as_user(user: str | None, *command) -> list[str]:
    "`command` run as `user` (through `runuser`), or as ourselves when `user` is None."
    return ["runuser", "-u", user, "--", *map(str, command)] if user else list(map(str, command))


@dataclass
class PostgresServer:
    "A running PostgreSQL: where it listens, its superuser (trust auth, no password) and how long it took to start."

    bin_dir: Path
    folder: Path
    port: int
    user: str | None
    superuser: str = "mwml"
    startup_s: float = 0.0
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        "The SQLAlchemy URL of `database` on this server."
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def run(self, *command, check: bool = True) -> subprocess.CompletedProcess:
        "Run one of the server's programs (as the server's user), its output captured."
        out = subprocess.run(as_user(self.user, self.bin_dir / command[0], *command[1:]), capture_output=True, text=True, timeout=60)
        if check and out.returncode:
            log = (self.folder / "server.log").read_text(errors="replace")[-3000:] if (self.folder / "server.log").exists() else ""
            pytest.fail(f"{command[0]} failed ({out.returncode}): {out.stderr or out.stdout}\nserver log:\n{log}")
        return out

    def start(self, check: bool = True) -> subprocess.CompletedProcess:
        "Start the server on its folder and port (tuned for tests: no fsync)."
        options = f"-h {self.host} -p {self.port} -k {self.folder} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        data = self.folder / "data"
        return self.run("pg_ctl", "-D", data, "-l", self.folder / "server.log", "-w", "-t", "60", "-o", options, "start", check=check)

    def stop(self, mode: str = "immediate"):
        "Stop the server (`immediate`: at once, its data thrown away; `fast`: connections closed, data kept)."
        self.run("pg_ctl", "-D", self.folder / "data", "-m", mode, "-w", "stop", check=False)

    def create_database(self) -> str:
        "A new, empty database; its URL."
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=self.host, port=self.port, user=self.superuser, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_postgres(bin_dir: Path, tries: int = 3) -> PostgresServer:
    "initdb a temporary cluster and start it on a free port of 127.0.0.1 (tuned for tests: no fsync)."
    user = server_user()
    folder = Path(tempfile.mkdtemp(prefix="mwml-pg-"))  # not pytest's tmp_path: its parents are closed to other users
    if user:
        shutil.chown(folder, user)
    server = PostgresServer(bin_dir, folder, 0, user)
    start = time.perf_counter()
    server.run("initdb", "-D", folder / "data", "-U", server.superuser, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
    for attempt in range(tries):  # another process may take the port between our check and the server's bind
        server.port = free_port()
        if server.start(check=attempt == tries - 1).returncode == 0:
            break
    server.startup_s = time.perf_counter() - start
    logger.info("PostgreSQL %s on %s:%d in %.2f s", bin_dir, server.host, server.port, server.startup_s)
    return server


def stop_postgres(server: PostgresServer):
    "Stop the server (fast: its data is thrown away) and remove its folder."
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    "A PostgreSQL server for the whole session; skipped when no PostgreSQL binaries can be found."
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH, in /usr/lib/postgresql or pgserver: {HOW_TO_GET}")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg 3 is not installed: pip install 'psycopg[binary]'")
    server = start_postgres(bin_dir)
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture
def own_postgres_server(postgres_server):
    "A PostgreSQL server of this test's own, to stop and start (skipped as `postgres_server` is)."
    server = start_postgres(postgres_server.bin_dir)
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    "The URL of a fresh database on the session's server (`postgresql://mwml@127.0.0.1:<port>/test_...`)."
    return postgres_server.create_database()


@pytest.fixture
def fresh_postgres_url(postgres_server) -> str:
    "The URL of a database of this test's own."
    return postgres_server.create_database()
