"""Opening a study's storage: a SQLite file path or any Optuna/SQLAlchemy storage URL.

SQLite is written by one process only (the search driver holds a lock file beside the database;
workers never touch it). Server databases (``postgresql://...``) take many writers and are what
clusters use.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from optuna.storages import RDBStorage
from sqlalchemy.exc import SQLAlchemyError

from studies.errors import StudyError


def storage_url(storage: str | Path) -> str:
    """``study.db`` -> ``sqlite:///<abs path>``; URLs are returned unchanged."""
    s = str(storage)
    if "://" in s:
        return s
    return f"sqlite:///{Path(s).expanduser().resolve()}"


def _check_sqlite_file(path: Path, must_exist: bool) -> None:
    if not path.exists():
        if must_exist:
            raise StudyError(f"{path} does not exist")
        if not path.parent.is_dir():
            raise StudyError(f"cannot create {path}: folder {path.parent} does not exist")
        return
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise StudyError(f"cannot read {path}: {exc.strerror}") from None
    if head and head != b"SQLite format 3\x00":
        raise StudyError(f"{path} is not a SQLite database")
    if head:
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                ok = con.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise StudyError(f"{path} is not a readable SQLite database ({exc})") from None
        if ok != "ok":
            raise StudyError(f"{path} is corrupt (sqlite quick_check: {ok})")
        if tables and "studies" not in tables:
            raise StudyError(f"{path} is a SQLite database but not an Optuna study (tables: {sorted(tables)[:5]})")


def sqlite_path(storage: str | Path) -> Path | None:
    url = storage_url(storage)
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def open_storage(storage: str | Path, must_exist: bool = False) -> RDBStorage:
    url = storage_url(storage)
    path = sqlite_path(url)
    if path is not None:
        _check_sqlite_file(path, must_exist)
    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    except (SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise StudyError(f"cannot open storage {redact(url)}: {msg}") from None


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.rsplit("@", 1)
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in cred else url
