"""Opening a study's storage: a SQLite file path or any Optuna/SQLAlchemy storage URL.

SQLite is written by one process only (the search driver holds a lock file beside the database;
workers never touch it). Server databases (``postgresql://...``) take many writers and are what
clusters use.
"""

from __future__ import annotations

import re
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from studies.errors import StudyError
from studies.heartbeat import HeartbeatConfig


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


def open_storage(storage: str | Path, must_exist: bool = False, heartbeat: HeartbeatConfig | None = None,
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> RDBStorage:
    """The storage; with ``heartbeat``, drivers beat for their running trials and ``on_stale`` gets each
    trial of a driver that stopped beating (see :mod:`studies.heartbeat`)."""
    url = storage_url(storage)
    path = sqlite_path(url)
    if path is not None:
        _check_sqlite_file(path, must_exist)
    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    beat = {} if heartbeat is None else {"heartbeat_interval": heartbeat.interval_s,
                                         "grace_period": heartbeat.grace_s,
                                         "heartbeat_stale_trial_callback": on_stale}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # Optuna marks the heartbeat arguments experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except IntegrityError:  # two drivers creating the tables of a new server database at once
            if attempt == 2:
                raise StudyError(f"cannot create the study tables in {redact(url)}") from None
            time.sleep(0.5 + attempt)
        except (SQLAlchemyError, ImportError, ValueError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise StudyError(f"cannot open storage {redact(url)}: {scrub(msg, url)}") from None
    raise AssertionError("unreachable")


def scrub(text: str, url: str) -> str:
    """``text`` with the password of ``url`` (if any) replaced, wherever it appears."""
    password = _password(url)
    return text.replace(password, "***") if password else text


def _password(url: str) -> str | None:
    if "://" not in url or "@" not in url:
        return None
    cred = url.split("://", 1)[1].rsplit("@", 1)[0]
    return cred.split(":", 1)[1] if ":" in cred else None


_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]+@")


def redact(text: str) -> str:
    """``text`` (a storage URL, or any message holding one) with every URL password replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1***@", str(text))
