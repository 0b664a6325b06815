"""Ray execution and a server database: the paths a cluster uses."""

from __future__ import annotations

import os
import shutil
import signal

import optuna
import pytest
from optuna.trial import TrialState

from ens.search.driver import SearchOptions, run_search
from studies.runner import Objective, Outcome, RunConfig, create_or_load, run_study
from studies.samplers import make_sampler
from studies.storage import open_storage

OBJ = [Objective("score", "maximize")]


def space(trial):
    a = trial.suggest_categorical("a", list("abcdef"))
    return a, a


class CrashOnce:
    """Kills its own worker process the first time it sees 'a' (a marker file remembers)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, payload):
        if payload == "a" and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        import ray

        return Outcome({"score": float("abcdef".index(payload))},
                       attrs={"pid": os.getpid(), "node_ip": ray.nodes()[0]["NodeManagerAddress"]})


def test_ray_workers_and_a_killed_worker(tmp_path):
    study = create_or_load("ray", open_storage(tmp_path / "s.db"), OBJ, make_sampler("random", 0))
    study.enqueue_trial({"a": "a"})
    s = run_study(study, OBJ, space, CrashOnce(str(tmp_path / "crashed")),
                  RunConfig(n_trials=4, workers=2, cpus_per_trial=1, max_retries=1))
    assert s.completed == 4 and s.failed == 1 and s.retried == 1
    # a proposal equal to a trial still running is failed as a duplicate, not evaluated twice
    failed = [t for t in study.get_trials(states=(TrialState.FAIL,)) if "duplicate_of" not in t.user_attrs]
    assert len(failed) == 1 and "died" in failed[0].user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert retry and retry[0].state == TrialState.COMPLETE and retry[0].params == {"a": "a"}
    assert all(t.user_attrs["pid"] != os.getpid() for t in study.get_trials(states=(TrialState.COMPLETE,)))
    # a local Ray cluster listens on loopback only
    assert {t.user_attrs["node_ip"] for t in study.get_trials(states=(TrialState.COMPLETE,))} == {"127.0.0.1"}


def test_search_on_postgresql(postgres_url, micro_zoo, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo, root / "deblur-tiny")
    opts = SearchOptions(task="deblur", objective="psnr,latency", profiler="proxy", trials=3, workers=0,
                         storage=postgres_url, preset="tiny", zoo_root=str(root), shape="1x3x32x32",
                         sampler="random", study_name="pg", artifacts=str(tmp_path / "art"))
    study, s = run_search(opts, log=lambda m: None)
    assert s.completed == 3
    again = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert {"arch", "psnr", "latency"} <= set(again.trials[0].user_attrs)
    _, s2 = run_search(SearchOptions(**{**opts.__dict__, "trials": 4}), log=lambda m: None)
    assert s2.evaluated == 1


def test_unreachable_server_is_a_clear_error():
    from studies.errors import StudyError

    with pytest.raises(StudyError, match="cannot open storage postgresql"):
        open_storage("postgresql+psycopg2://nobody:pw@127.0.0.1:9/none")


def _gpu_env(payload):
    import ray

    from ens.compute import resolve_device

    return Outcome({"score": 1.0}, attrs={"cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                          "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                                          "auto": str(resolve_device("auto"))})


def test_gpu_trials_get_the_gpus_ray_assigns(tmp_path):
    """--gpus-per-trial 1 on a local Ray: each trial is given one GPU by Ray (declared logical GPUs here, as
    Ray itself declares them; no real GPU) and sees only it in CUDA_VISIBLE_DEVICES, which ens never sets."""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    study = create_or_load("gpus", open_storage(tmp_path / "s.db"), OBJ, make_sampler("random", 0))
    s = run_study(study, OBJ, space, _gpu_env, RunConfig(n_trials=3, workers=2, cpus_per_trial=1,
                                                         gpus_per_trial=1))
    assert s.completed == 3
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        ids = t.user_attrs["gpu_ids"]
        assert len(ids) == 1 and ids[0] in ("0", "1")
        assert t.user_attrs["cuda_visible"] == ids[0], "Ray narrowed CUDA_VISIBLE_DEVICES to the trial's GPU"
        assert t.user_attrs["auto"] == "cpu", "no real GPU behind the logical one: --device auto falls back"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ, "the driver's environment is untouched"
