"""A throw-away PostgreSQL server on loopback for tests (Debian's postgresql package)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.port = free_port()
        self.initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        # postgres refuses to run as root: run it as the postgres user the Debian package creates
        self.prefix: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, args: list[str], timeout: float = 60) -> None:
        subprocess.run(self.prefix + args, check=True, capture_output=True, timeout=timeout)

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if self.prefix:
            os.chmod(self.root.parent, 0o755)
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
            os.chmod(self.root, 0o755)
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.sock} -F"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"])
        url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        import sqlalchemy

        deadline = time.monotonic() + 30
        while True:
            try:
                with sqlalchemy.create_engine(url).connect():
                    break
            except sqlalchemy.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        return url

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"], timeout=30)
        except (subprocess.SubprocessError, OSError):
            pass
