"""A search driver for the heartbeat fault tests: ``python -m tests.heartbeat_driver URL STUDY N SLEEP_S TAG``.

It runs :func:`studies.runner.run_study` on a server study with 1-second heartbeats; each evaluation
sleeps, then returns the trial's x as the objective and the driver's TAG as an attribute.
"""

from __future__ import annotations

import sys
import time

import optuna

from studies.heartbeat import HeartbeatConfig
from studies.runner import Objective, Outcome, RunConfig, create_or_load, run_study, stale_requeuer
from studies.storage import open_storage

OBJ = [Objective("y", "minimize")]


def main(url: str, name: str, n: int, sleep_s: float, tag: str) -> None:
    storage = open_storage(url, heartbeat=HeartbeatConfig(interval_s=1, grace_s=3), on_stale=stale_requeuer(1))
    study = create_or_load(name, storage, OBJ, optuna.samplers.RandomSampler(seed=hash(tag) % 1000))

    def space(trial: optuna.Trial) -> tuple[str, float]:
        x = trial.suggest_int("x", 0, 10_000)
        return str(x), float(x)

    def evaluate(x: float) -> Outcome:
        time.sleep(sleep_s)
        return Outcome({"y": x}, attrs={"driver": tag})

    summary = run_study(study, OBJ, space, evaluate, RunConfig(n_trials=n, workers=0, exclusive=False),
                        storage=storage)
    print(f"done {tag} completed={summary.completed} evaluated={summary.evaluated}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
