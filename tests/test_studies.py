from __future__ import annotations

import os
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState

from studies.errors import StudyError
from studies.lock import StudyLock
from studies.runner import Objective, Outcome, RunConfig, create_or_load, run_study
from studies.samplers import make_sampler
from studies.storage import open_storage, redact, storage_url

OBJ = [Objective("score", "maximize"), Objective("cost", "minimize")]


def space(trial):
    a = trial.suggest_categorical("a", ["x", "y", "z"])
    b = trial.suggest_categorical("b", ["x", "y"])
    return f"{a}{b}", (a, b)


def evaluate(payload):
    a, b = payload
    return Outcome({"score": "xyz".index(a) + 0.5 * "xy".index(b), "cost": 1.0 + "xyz".index(a)},
                   attrs={"arch": f"{a}{b}"}, artifacts={"note.txt": f"{a}{b}".encode()})


def _study(tmp_path, name="s", sampler="random"):
    storage = open_storage(tmp_path / "study.db")
    return create_or_load(name, storage, OBJ, make_sampler(sampler, 0))


def test_runs_dedupes_and_resumes(tmp_path):
    study = _study(tmp_path)
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    os.makedirs(tmp_path / "artifacts")
    s1 = run_study(study, OBJ, space, evaluate, RunConfig(n_trials=3, workers=0), artifact_store=store)
    assert s1.completed == 3 and s1.evaluated == 3
    s2 = run_study(_study(tmp_path), OBJ, space, evaluate, RunConfig(n_trials=6, workers=0))
    assert s2.evaluated == 3, "a resumed run evaluates only what is missing"
    trials = _study(tmp_path).get_trials(states=(TrialState.COMPLETE,))
    keys = [t.user_attrs["key"] for t in trials if "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys)) == 6, "every key evaluated once"
    for t in trials:
        if "duplicate_of" in t.user_attrs:
            orig = _study(tmp_path).trials[t.user_attrs["duplicate_of"]]
            assert t.values == orig.values
    first = trials[0]
    assert "note.txt" in first.user_attrs["artifacts"]
    assert first.user_attrs["score"] == first.values[0]


def test_exhausted_space_stops(tmp_path):
    s = run_study(_study(tmp_path), OBJ, space, evaluate, RunConfig(n_trials=50, workers=0, max_duplicates=30))
    assert s.exhausted and s.completed == 6


def test_budget_becomes_constraint(tmp_path):
    study = _study(tmp_path)
    run_study(study, OBJ, space, evaluate, RunConfig(n_trials=4, workers=0, budgets={"cost": 2.0}))
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        c = t.user_attrs["cost"] - 2.0
        assert t.constraints["cost_budget"] == pytest.approx(c)
        assert t.user_attrs["feasible"] == (c <= 0)


def test_evaluation_error_fails_with_reason(tmp_path):
    def bad(payload):
        raise ValueError("nan loss")

    study = _study(tmp_path)
    with pytest.raises(StudyError, match="3 trials failed in a row.*nan loss"):
        run_study(study, OBJ, space, bad, RunConfig(n_trials=2, workers=0, max_consecutive_failures=3))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed and "nan loss" in failed[0].user_attrs["fail_reason"]


def test_stale_running_trials_are_failed_and_requeued(tmp_path):
    study = _study(tmp_path)
    t = study.ask()
    space(t)  # a driver that died after asking
    run_study(study, OBJ, space, evaluate, RunConfig(n_trials=2, workers=0))
    old = study.trials[t.number]
    assert old.state == TrialState.FAIL
    retried = [x for x in study.trials if x.user_attrs.get("retry_of") == t.number]
    assert retried and retried[0].params == old.params and retried[0].state == TrialState.COMPLETE
    assert "stopped" in retried[0].user_attrs["retry_reason"]


def test_objectives_must_match_existing_study(tmp_path):
    _study(tmp_path)
    with pytest.raises(StudyError, match="other objectives"):
        create_or_load("s", open_storage(tmp_path / "study.db"), [Objective("score", "maximize")],
                       make_sampler("tpe", 0))


def test_storage_errors(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all")
    with pytest.raises(StudyError, match="not a SQLite database"):
        open_storage(junk)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("create table people (name text)")
    con.commit()
    con.close()
    with pytest.raises(StudyError, match="not an Optuna study"):
        open_storage(foreign)
    with pytest.raises(StudyError, match="does not exist"):
        open_storage(tmp_path / "nope.db", must_exist=True)
    with pytest.raises(StudyError, match="cannot open storage"):
        open_storage("postgresql://u:secret@127.0.0.1:1/db")
    with pytest.raises(StudyError, match="folder"):
        open_storage(tmp_path / "no" / "dir" / "s.db")
    assert "secret" not in redact("postgresql://u:secret@127.0.0.1:1/db")
    assert storage_url("x.db").startswith("sqlite:////")


def test_second_writer_is_refused(tmp_path):
    db = tmp_path / "study.db"
    with StudyLock(db):
        with pytest.raises(StudyError, match="another ens search"):
            with StudyLock(db):
                pass
    with StudyLock(db):  # released
        pass


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random"])
def test_samplers_are_seeded(tmp_path, name):
    def params(seed):
        st = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, seed))
        run_study(st, OBJ, space, evaluate, RunConfig(n_trials=5, workers=0))
        return [t.params for t in st.trials]

    assert params(1) == params(1)
    with pytest.raises(StudyError, match="unknown sampler"):
        make_sampler("grid", 0)


def test_a_budget_set_on_trials_steers_tpe():
    """Constraints reach the sampler through ``Trial.set_constraint`` alone: with a latency budget, TPE puts
    most trials after its start-up in the feasible region, where random sampling puts about 30%."""

    def share_feasible(name: str) -> float:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(name, 3))
        for _ in range(50):
            t = study.ask()
            x = t.suggest_float("x", 0.0, 1.0)
            t.set_constraint("latency_budget", x - 0.3)
            study.tell(t, [x, x])
        late = [t.params["x"] for t in study.trials[20:]]
        return sum(x <= 0.3 for x in late) / len(late)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tpe, rnd = share_feasible("tpe"), share_feasible("random")
    assert tpe >= 0.6 and tpe > rnd + 0.2, (tpe, rnd)


def test_workers_beyond_the_machine_or_cluster_are_refused():
    from studies.executors import check_cluster_capacity, check_local_capacity

    check_local_capacity(2, 1.0, cpus=2)
    with pytest.raises(StudyError, match="--workers 1000 .* this machine has 2: use at most 2 workers"):
        check_local_capacity(1000, 1.0, cpus=2)
    with pytest.raises(StudyError, match="use at most 1 workers"):
        check_local_capacity(2, 2.0, cpus=2)
    check_cluster_capacity({"CPU": 64.0, "GPU": 8.0}, 8, 4.0, 1.0)
    with pytest.raises(StudyError, match="needs 16 CPUs and 16 GPUs; the Ray cluster has 64 CPUs and 8 GPUs"):
        check_cluster_capacity({"CPU": 64.0, "GPU": 8.0}, 16, 1.0, 1.0)
