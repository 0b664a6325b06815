"""``ens dashboard``: optuna-dashboard on loopback, and what it serves of a real search's study.

The dashboard's WSGI app is called in-process (no socket): its JSON API must list the study, name its
objectives with units, and give every trial its user attrs, its Note and a sample image large enough
to judge, which is what a user browses. A predicted latency says so, with its measured error, in the
metric name, the report's plot and the search's Pareto table alike.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import torch
from optuna.trial import TrialState

from ens.cli import main
from ens.report import load_study
from ens.search.driver import SearchOptions, artifact_dir, run_search
from ens.search.objectives import latency_label
from ens.search.trial import SAMPLE_CROP, TrialContext, sample_pair
from profilers.result import MEASURED, PREDICTED, PROXY
from studies.storage import open_storage
from tests.latency_tables import micro_table as _micro_table

optuna_dashboard = pytest.importorskip("optuna_dashboard")


@pytest.fixture(scope="module")
def searched(micro_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    shutil.copytree(micro_zoo, root / "zoo" / "deblur-tiny")
    db = root / "study.db"
    run_search(SearchOptions(task="deblur", objective="psnr,latency", profiler="proxy", trials=3, workers=0,
                             storage=str(db), preset="tiny", zoo_root=str(root / "zoo"), shape="1x3x32x32",
                             sampler="random"), log=lambda m: None)
    return db


def _get(app, path: str, query: str = "") -> tuple[str, dict]:
    status, body = _get_bytes(app, path, query)
    return status, json.loads(body)


def _get_bytes(app, path: str, query: str = "") -> tuple[str, bytes]:
    env = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(env)
    status = []
    body = b"".join(app(env, lambda s, h, exc=None: status.append(s)))
    return status[0], body


def test_dashboard_binds_to_loopback_with_the_artifact_store(searched, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: seen.update(kw))
    with pytest.raises(SystemExit) as done:
        main(["dashboard", str(searched), "--port", "8123"])
    assert done.value.code in (0, None)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["artifact_store"] is not None and artifact_dir(str(searched), None).is_dir()
    cap = capsys.readouterr()
    assert "http://127.0.0.1:8123/" in cap.out and "warning" not in cap.err
    with pytest.raises(SystemExit):
        main(["dashboard", str(searched), "--host", "0.0.0.0"])
    assert seen["host"] == "0.0.0.0" and "no authentication" in capsys.readouterr().err


def test_dashboard_serves_every_trial_with_its_attrs(searched):
    app = optuna_dashboard.wsgi(open_storage(searched, must_exist=True))
    status, studies = _get(app, "/api/studies")
    assert status.startswith("200") and [s["study_name"] for s in studies["study_summaries"]] == ["deblur-tiny"]
    sid = studies["study_summaries"][0]["study_id"]
    status, detail = _get(app, f"/api/studies/{sid}", "after=0")
    assert status.startswith("200")
    trials = [t for t in detail["trials"] if t["state"] == "Complete"]  # enqueued ones have no attrs yet
    assert len(trials) >= 3
    for t in trials:
        attrs = {a["key"] for a in t["user_attrs"]}
        assert {"arch", "arch_hash", "psnr", "ssim", "latency", "params", "macs", "zoo_id", "worker"} <= attrs


def _study_detail(db) -> dict:
    app = optuna_dashboard.wsgi(open_storage(db, must_exist=True))
    sid = _get(app, "/api/studies")[1]["study_summaries"][0]["study_id"]
    return _get(app, f"/api/studies/{sid}", "after=0")[1]


def test_the_dashboard_names_the_objectives_and_each_trial_has_a_note(searched):
    from PIL import Image

    store = optuna.artifacts.FileSystemArtifactStore(str(artifact_dir(str(searched), None)))
    app = optuna_dashboard.wsgi(open_storage(searched, must_exist=True), artifact_store=store)
    detail = _study_detail(searched)
    assert detail["objective_names"] == ["PSNR (dB)", "transformer blocks (latency proxy)"]
    noted = 0
    for t in detail["trials"]:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        if "duplicate_of" in attrs or "arch" not in attrs:
            continue
        noted += 1
        body = t["note"]["body"]
        assert attrs["arch"] in body and attrs["zoo_id"] in body, body
        assert "| slot | blocks | kinds |" in body and "| enc1 | 1 |" in body
        assert "transformer blocks (latency proxy)" in body
        [art] = [a for a in t["artifacts"] if a["filename"] == "sample.png"]
        url = f"/artifacts/{t['study_id']}/{t['trial_id']}/{art['artifact_id']}"
        assert f"![sample.png]({url})" in body, "the sample shows full size in the Note, not only as a 200 px card"
        status, png = _get_bytes(app, url)
        assert status.startswith("200") and Image.open(io.BytesIO(png)).width >= 3 * SAMPLE_CROP
    assert noted >= 3


def test_the_sample_artifact_is_a_held_out_image_large_enough_to_judge(searched):
    from PIL import Image

    study = load_study(searched)
    art = artifact_dir(str(searched), None)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        if "duplicate_of" in t.user_attrs:
            continue
        with Image.open(art / t.user_attrs["artifacts"]["sample.png"]) as img:
            assert img.format == "PNG"
            assert img.width >= 3 * SAMPLE_CROP and img.height >= SAMPLE_CROP, img.size


def test_a_small_sample_crop_keeps_to_multiples_of_8_and_the_image():
    img = (torch.rand(3, 60, 90), torch.rand(3, 60, 90))
    ctx = TrialContext(manifest={}, zoo_state={}, task="deblur", val=[(torch.rand(3, 16, 16),) * 2], profiler="proxy",
                       shape=(1, 3, 16, 16), objectives=["psnr"], sample=img, sample_crop=45)
    assert sample_pair(ctx)[0].shape == (3, 40, 40) and sample_pair(ctx)[1].shape == (3, 40, 40)
    ctx.sample_crop = 256
    assert sample_pair(ctx)[0].shape == (3, 56, 56), "never more than the image, a multiple of 8"
    ctx.sample = None
    assert sample_pair(ctx)[0].shape == (3, 16, 16), "no sample image: the first held-out patch"


def test_notes_are_skipped_without_optuna_dashboard(monkeypatch):
    import optuna

    from studies.runner import save_note

    study = optuna.create_study()
    trial = study.ask()
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails: not installed
    save_note(trial, "a note")
    monkeypatch.undo()
    assert optuna_dashboard.get_note(trial) == ""
    save_note(trial, "a note")
    assert optuna_dashboard.get_note(trial) == "a note"


def test_latency_labels_say_measured_predicted_or_proxy():
    assert latency_label("ort-cpu", MEASURED) == "latency (ms, measured on ort-cpu)"
    assert latency_label("lut:ort-cpu", PREDICTED, "ms", 3.94) == \
        "latency (ms, predicted by lut:ort-cpu, ±3.9% measured error)"
    assert latency_label("lut:ort-cpu", PREDICTED) == "latency (ms, predicted by lut:ort-cpu, error not verified)"
    assert latency_label("proxy", PROXY, "transformer blocks") == "transformer blocks (latency proxy)"


def test_a_predicted_latency_says_so_with_its_error_everywhere(micro_zoo, tmp_path):
    from ens.report import latency_axis_label, pareto_frame, trials_frame, write_report
    from ens.zoo.store import Zoo

    shutil.copytree(micro_zoo, tmp_path / "zoo" / "deblur-tiny")
    _micro_table(Zoo.load(micro_zoo), (1, 3, 32, 32), 4.2)
    study, _ = run_search(SearchOptions(task="deblur", profiler="lut:ort-cpu", trials=3, workers=0,
                                        storage=str(tmp_path / "s.db"), zoo_root=str(tmp_path / "zoo"),
                                        shape="1x3x32x32", sampler="random"), log=lambda m: None)
    label = "latency (ms, predicted by lut:ort-cpu, ±4.2% measured error)"
    assert study.metric_names == ["PSNR (dB)", label]
    df = trials_frame(study)
    assert latency_axis_label(df) == label, "the pareto.png axis and the search's Pareto table header"
    assert latency_axis_label(pareto_frame(study, df)) == label
    assert write_report(study, tmp_path / "report")["latency"] == label
    t = next(t for t in study.trials if "arch" in t.user_attrs)
    assert t.user_attrs["latency_error_pct"] == 4.2 and t.user_attrs["latency_source"] == PREDICTED
    assert "±4.2%" in optuna_dashboard.get_note(optuna.trial.Trial(study, t._trial_id))


def test_a_table_without_a_verification_says_its_error_is_not_verified(micro_zoo, tmp_path):
    from ens.search.objectives import latency_naming
    from ens.zoo.store import Zoo
    from profilers.registry import get_profiler

    zoo = Zoo.load(micro_zoo)
    cfg = zoo.config
    _micro_table(zoo, (1, 3, 32, 32), None)
    name, err = latency_naming(get_profiler("lut:ort-cpu"), cfg, (1, 3, 32, 32))
    assert err is None and name == "latency (ms, predicted by lut:ort-cpu, error not verified)"
    assert latency_naming(get_profiler("ort-cpu"), cfg, (1, 3, 32, 32)) == ("latency (ms, measured on ort-cpu)", None)
