"""``ens dashboard``: optuna-dashboard on loopback, and what it serves of a real search's study.

The dashboard's WSGI app is called in-process (no socket): its JSON API must list the study and
every trial's user attrs, which is what a user browses.
"""

from __future__ import annotations

import io
import json
import shutil
from wsgiref.util import setup_testing_defaults

import pytest

from ens.cli import main
from ens.search.driver import SearchOptions, artifact_dir, run_search
from studies.storage import open_storage

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
    env = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(env)
    status = []
    body = b"".join(app(env, lambda s, h, exc=None: status.append(s)))
    return status[0], json.loads(body)


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
    trials = detail["trials"]
    assert len(trials) >= 3
    for t in trials:
        attrs = {a["key"] for a in t["user_attrs"]}
        assert {"arch", "arch_hash", "psnr", "ssim", "latency", "params", "macs", "zoo_id", "worker"} <= attrs
