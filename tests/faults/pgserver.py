"""A throwaway PostgreSQL server owned by the fault suite, so it can be stopped without hurting anyone.

It is set up as `scripts/start-postgres.sh` sets up the shared test server (Debian's binaries,
trust auth on 127.0.0.1, fsync off), but on a free port and in its own directory, and it is
removed at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import psycopg2

MISSING = (
    "PostgreSQL could not be started for the fault suite ({why}). It needs Debian's `postgresql` "
    "package; `make test` installs it (and starts the shared test server)."
)


class PostgresUnavailable(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise PostgresUnavailable(MISSING.format(why="no /usr/lib/postgresql/*/bin"))
    return versions[-1]


class Postgres:
    def __init__(self) -> None:
        self.port = _free_port()
        self.root = Path(f"/tmp/seratio-faults-pg-{self.port}")
        self.data = self.root / "data"
        self.bin = _server_bin()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
            self.start()
        except subprocess.CalledProcessError as error:
            raise PostgresUnavailable(MISSING.format(why=error.stderr.decode().strip())) from None

    def fresh_database(self, name: str) -> str:
        """The URL of a new, empty database: workers meet Optuna's schema not yet created, as on day one."""
        connection = psycopg2.connect(self.url)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        self._pg_ctl("start", "-l", str(self.root / "server.log"), "-o", self.options)

    def remove(self) -> None:
        subprocess.run(self._command("pg_ctl", "-D", str(self.data), "stop", "-m", "immediate"), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", *args)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(self._command(program, *args), check=True, capture_output=True, timeout=120)

    def _command(self, program: str, *args: str) -> list[str]:
        """The server refuses to run as root; as root, run its tools as the `postgres` user."""
        command = [str(self.bin / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command
