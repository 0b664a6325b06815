"""Exclusive lock files: one writer per SQLite study, one build per zoo folder."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from studies.errors import StudyError


class FileLock:
    """An exclusive ``flock`` on ``path``, which holds the owner's pid; released when its process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; without ``wait``, False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text(errors="replace").strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class StudyLock(FileLock):
    """Refuses a second writer of one SQLite study."""

    def __init__(self, db_path: Path) -> None:
        super().__init__(db_path.with_name(db_path.name + ".lock"))

    def __enter__(self) -> StudyLock:
        if not self.acquire(wait=False):
            raise StudyError(
                f"another ens search (pid {self.holder()}) is writing {self.path.name[:-5]}; SQLite takes one "
                f"writer: wait for it, or use a PostgreSQL storage URL for parallel drivers"
            )
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class WaitingLock(FileLock):
    """Waits for another process doing the same work (a zoo build), saying so once."""

    def __init__(self, path: Path, what: str, log: Callable[[str], None]) -> None:
        super().__init__(path)
        self.what, self.log = what, log

    def __enter__(self) -> WaitingLock:
        if not self.acquire(wait=False):
            self.log(f"waiting for another process (pid {self.holder()}) building {self.what}")
            self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()
