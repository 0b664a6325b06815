"""Heartbeats for a driver's running trials, so that only a dead driver's trials are failed.

Several drivers may share one server study (PostgreSQL). Each records, on a daemon thread, a heartbeat
for the trials it runs (Optuna's ``RDBStorage.record_heartbeat``) every ``interval_s`` seconds; a trial
whose heartbeat is older than the storage's grace period belongs to a driver that died, and
:func:`fail_stale` fails it with Optuna's ``fail_stale_trials`` (which fails each trial once, whichever
driver asks first) and re-enqueues it through the storage's stale-trial callback.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import optuna
from optuna.storages import BaseStorage


@dataclass(frozen=True)
class HeartbeatConfig:
    interval_s: int = 10
    grace_s: int = 60  # a trial with no heartbeat for this long is stale: its driver is gone

    def __post_init__(self) -> None:
        if self.interval_s < 1 or self.grace_s <= self.interval_s:
            raise ValueError("heartbeat: the interval must be >= 1 s and the grace period longer than it")


def heartbeat_enabled(storage: BaseStorage) -> bool:
    get = getattr(storage, "get_heartbeat_interval", None)
    return get is not None and get() is not None


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose driver stopped beating (a no-op on a storage without heartbeats)."""
    with warnings.catch_warnings():  # experimental since Optuna 2.9, and what its own optimize() calls
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class Heartbeat:
    """Beats for the trial numbers in :attr:`numbers` while running; ``with Heartbeat(...)``."""

    def __init__(self, study: optuna.Study, storage: BaseStorage, interval_s: float) -> None:
        self._storage = storage
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self.interval_s = interval_s
        self._numbers: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ens-heartbeat", daemon=True)

    def add(self, number: int) -> None:
        with self._lock:
            self._numbers.add(number)
        self._beat([number])  # at once: a driver killed before its first beat would leave it RUNNING forever

    def discard(self, number: int) -> None:
        with self._lock:
            self._numbers.discard(number)

    def _beat(self, numbers: list[int]) -> None:
        for n in numbers:
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, n)
            try:
                self._storage.record_heartbeat(trial_id)
            except Exception:  # a finished trial, or the server briefly away: the next beat retries
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                numbers = sorted(self._numbers)
            self._beat(numbers)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
