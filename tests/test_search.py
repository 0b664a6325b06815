from __future__ import annotations

import shutil

import optuna
import pytest
from optuna.trial import TrialState

from ens.errors import EnsError
from ens.report import ALL_T, load_study, pareto_frame, trials_frame, write_report
from ens.search.driver import SearchOptions, run_search
from ens.search.objectives import parse_objectives, score
from studies.errors import StudyError


@pytest.fixture
def zoo_root(micro_zoo, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo, root / "deblur-tiny")
    return root


def _opts(tmp_path, zoo_root, **kw):
    base = dict(task="deblur", objective="psnr,latency", profiler="proxy", trials=5, workers=0,
                storage=str(tmp_path / "study.db"), preset="tiny", zoo_root=str(zoo_root), shape="1x3x32x32",
                sampler="random")
    base.update(kw)
    return SearchOptions(**base)


def test_objectives_parse():
    assert [o.metric for o in parse_objectives("psnr, latency")] == ["psnr", "latency"]
    assert parse_objectives("psnr,latency")[1].direction == "minimize"
    for bad, msg in [("psnr,speed", "unknown objective"), ("latency", "no quality"), ("score,psnr", "alone"),
                     ("psnr,psnr", "twice"), ("", "empty")]:
        with pytest.raises(EnsError, match=msg):
            parse_objectives(bad)
    assert score(30.0, 50.0, 100.0, alpha=0.5) == pytest.approx(30.5)


def test_search_records_every_trial_and_resumes(tmp_path, zoo_root):
    study, s = run_search(_opts(tmp_path, zoo_root), log=lambda m: None)
    assert s.completed == 5
    done = study.get_trials(states=(TrialState.COMPLETE,))
    first = done[0].user_attrs
    assert first["arch"] == ALL_T, "the all-transformer reference is evaluated first"
    for t in done:
        a = t.user_attrs
        for key in ("arch", "arch_hash", "params", "macs", "transformer_count", "latencies", "psnr", "ssim",
                    "zoo_id", "latency_profiler", "latency_shape"):
            assert key in a, key
        assert t.values[0] == pytest.approx(a["psnr"])
        assert a["latencies"][0]["profiler"] == "proxy"
    arts = optuna.artifacts.get_all_artifact_meta(done[0], storage=study._storage)
    assert arts and arts[0].filename == "sample.png"
    assert (tmp_path / "study.artifacts").is_dir()
    study2, s2 = run_search(_opts(tmp_path, zoo_root, trials=7), log=lambda m: None)
    assert s2.evaluated == 2 and s2.completed == 7
    keys = [t.user_attrs["arch_hash"] for t in study2.get_trials(states=(TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys))

    df = trials_frame(study2)
    assert len(df) == 7 and df.loc[df["arch"] == ALL_T, "speedup"].iloc[0] == pytest.approx(1.0)
    front = pareto_frame(study2, df)
    assert 1 <= len(front) <= len(df)
    out = tmp_path / "report"
    summary = write_report(load_study(tmp_path / "study.db"), out)
    for f in ("trials.csv", "trials.md", "pareto.csv", "pareto.md", "pareto.png", "pareto.html", "summary.json"):
        assert (out / f).stat().st_size > 0, f
    assert len(summary["pareto"]) == len(front)


def test_search_refuses_mismatched_resume_and_bad_input(tmp_path, zoo_root):
    run_search(_opts(tmp_path, zoo_root, trials=1), log=lambda m: None)
    with pytest.raises(StudyError, match="objectives"):
        run_search(_opts(tmp_path, zoo_root, objective="psnr,params"), log=lambda m: None)
    with pytest.raises(StudyError, match="--profiler"):
        run_search(_opts(tmp_path, zoo_root, profiler="lut:ort-cpu"), log=lambda m: None)
    for kw, msg in [({"trials": 0}, "at least 1"), ({"workers": -1}, "workers"), ({"task": "dehaze"}, "unknown task"),
                    ({"sampler": "grid"}, "unknown sampler"), ({"data": str(tmp_path / "nope")}, "does not exist"),
                    ({"latency_budget": -3.0}, "positive")]:
        with pytest.raises((EnsError, StudyError), match=msg):
            run_search(_opts(tmp_path, zoo_root, **kw), log=lambda m: None)


def test_latency_budget_is_a_constraint(tmp_path, zoo_root):
    study, _ = run_search(_opts(tmp_path, zoo_root, trials=4, latency_budget=4.0), log=lambda m: None)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.constraints["latency_budget"] == pytest.approx(t.user_attrs["latency"] - 4.0)
        assert t.user_attrs["feasible"] == (t.user_attrs["latency"] <= 4.0)


def test_search_in_int8_times_the_shipped_graph_and_records_its_precision(micro_zoo, tmp_path):
    """--precision int8: every latency is of the onnx_int8 graph; the study says so, and holds to it."""
    import shutil

    import pytest

    from ens.finalize.pipeline import precision_warning
    from ens.finalize.targets import get_target
    from ens.search.driver import SearchOptions, run_search
    from studies.errors import StudyError

    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo, root / "deblur-tiny")
    opts = SearchOptions(task="deblur", profiler="ort-cpu?runs=2&rounds=1&warmup=1", trials=2, workers=0,
                         storage=str(tmp_path / "s.db"), zoo_root=str(root), shape="1x3x32x32", sampler="random",
                         precision="int8", kinds="T,E,I")
    study, s = run_search(opts, log=lambda m: None)
    assert s.completed == 2 and study.user_attrs["precision"] == "int8" and study.user_attrs["kinds"] == ["T", "E", "I"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert {t.user_attrs["latency_precision"] for t in done} == {"int8"}
    assert all(set(t.user_attrs["arch"]) & set("MSL") == set() for t in done)  # only T, E and I
    with pytest.raises(StudyError, match="--precision int8"):
        run_search(SearchOptions(**{**opts.__dict__, "precision": "fp32", "trials": 3}), log=lambda m: None)
    with pytest.raises(Exception, match="the zoo has no Q"):
        run_search(SearchOptions(**{**opts.__dict__, "kinds": "T,Q", "study_name": "other"}), log=lambda m: None)
    assert precision_warning("int8", get_target("onnx_int8")) is None
    assert "ranked latencies in INT8" in precision_warning("int8", get_target("onnx_fp32"))
    assert "--precision int8" in precision_warning(None, get_target("trt_int8"))
    assert precision_warning(None, get_target("trt_int8"), "proxy") is None  # a block count has no precision


def test_enqueued_architectures_are_evaluated_once_and_bad_ones_refused(tmp_path, zoo_root):
    """--enqueue: the named arch is a trial of the study (after the uniform references), not repeated on resume."""
    arch = "enc:E,M,T|lat:E|dec:M,E,T|ref:E"
    study, _ = run_search(_opts(tmp_path, zoo_root, trials=4, kinds="T,M,E", enqueue=(arch,)), log=lambda m: None)
    archs = [t.user_attrs["arch"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert archs[0] == ALL_T and archs[3] == arch
    study, _ = run_search(_opts(tmp_path, zoo_root, trials=6, kinds="T,M,E", enqueue=(arch,)), log=lambda m: None)
    archs = [t.user_attrs["arch"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(archs) == 6 and archs.count(arch) == 1
    for bad, msg in [("enc:E,M,S|lat:E|dec:M,E,T|ref:E", "not searched here"), ("enc:E|lat:E", "malformed")]:
        with pytest.raises(EnsError, match=msg):
            run_search(_opts(tmp_path, zoo_root, study_name="other", kinds="T,M,E", enqueue=(bad,)),
                       log=lambda m: None)
    assert [s.study_name for s in optuna.get_all_study_summaries(study._storage)] == ["deblur-tiny"]
