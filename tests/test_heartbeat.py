"""Parallel drivers on one PostgreSQL study: heartbeats fail only a dead driver's trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies.heartbeat import HeartbeatConfig

ROOT = Path(__file__).resolve().parents[1]


def _driver(url: str, name: str, n: int, sleep_s: float, tag: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.heartbeat_driver", url, name, str(n), str(sleep_s), tag],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_heartbeat_config_is_checked():
    with pytest.raises(ValueError, match="grace"):
        HeartbeatConfig(interval_s=5, grace_s=5)


def test_two_drivers_share_a_study_without_failing_each_other(postgres_url):
    a = _driver(postgres_url, "two", 8, 0.5, "a")
    time.sleep(1.0)  # b starts while a has a trial running: the old recovery failed it here
    b = _driver(postgres_url, "two", 8, 0.5, "b")
    outs = [p.communicate(timeout=120)[0] for p in (a, b)]
    assert [p.returncode for p in (a, b)] == [0, 0], outs
    assert all("UpdateFinishedTrialError" not in o for o in outs)
    trials = optuna.load_study(study_name="two", storage=postgres_url).trials
    assert not [t.number for t in trials if t.state == TrialState.FAIL and "duplicate_of" not in t.user_attrs]
    drivers = {t.user_attrs.get("driver") for t in trials if t.state == TrialState.COMPLETE}
    assert drivers == {"a", "b"}
    assert sum(t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs for t in trials) >= 8


def test_a_killed_drivers_trials_are_recovered_after_the_grace_period(postgres_url):
    a = _driver(postgres_url, "kill", 4, 60.0, "a")  # its first trial never ends
    storage = optuna.storages.RDBStorage(postgres_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            running = optuna.load_study(study_name="kill", storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            running = []
        if running:
            break
        time.sleep(0.2)
    assert running, "driver a never started a trial"
    time.sleep(1.5)  # a has beaten for its trial at least once more
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=10)
    t0 = time.monotonic()
    b = _driver(postgres_url, "kill", 12, 0.5, "b")  # runs past the 3-s grace period
    out = b.communicate(timeout=120)[0]
    assert b.returncode == 0, out
    trials = optuna.load_study(study_name="kill", storage=postgres_url).trials
    dead = trials[running[0].number]
    assert dead.state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert retry and retry[0].params == dead.params and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["driver"] == "b" and "stopped" in retry[0].user_attrs["retry_reason"]
    assert retry[0].datetime_start.timestamp() - dead.datetime_start.timestamp() < 3 + 1.5 + 10
    assert time.monotonic() - t0 < 60
