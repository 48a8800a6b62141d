"""A throw-away PostgreSQL server for the bar store's tests
(tests/bars/test_bar_store_postgres.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.helpers import free_port


def postgres_bin() -> Path | None:
    """Where Debian's (or a PATH's) PostgreSQL server binaries are, if anywhere."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


class PostgresServer:
    """A throw-away PostgreSQL server in `root` on a free loopback port (trust auth, its
    unix socket in `root` too); run as the `postgres` user when we are root, which
    initdb refuses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        binaries = postgres_bin()
        assert binaries is not None, "no PostgreSQL server binaries on this machine"
        self._bin = binaries
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self.root.chmod(0o777)
        data = self.root / "pgdata"
        self._run(str(self._bin / "initdb"), "-D", str(data), "-U", "postgres",
                  "--auth=trust", "--no-sync")  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(str(self._bin / "pg_ctl"), "start", "-w", "-D", str(data), "-o", options,
                  "-l", str(self.root / "postgres.log"))  # fmt: skip

    def stop(self) -> None:
        self._run(str(self._bin / "pg_ctl"), "stop", "-m", "immediate", "-D",
                  str(self.root / "pgdata"))  # fmt: skip
