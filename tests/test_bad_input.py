"""The bad-input cases not covered beside their verbs: one line on stderr, exit code 2, nothing created.

(Unknown task/objective/sampler/profiler, bad counts and a missing data folder: test_cli_search.py;
malformed arch strings: test_cli_profile.py; unknown export target: test_finalize.py.)
"""

from __future__ import annotations

import optuna
import pytest

from ens.cli import main
from ens.data.fakes import make_paired


def _run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def _one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) <= 2  # rich may wrap one message


@pytest.mark.parametrize("make, needle", [
    (lambda root: root.mkdir(), "cannot tell the dataset layout"),
    (lambda root: make_paired(root, n=4, size=(20, 24)), "smaller than"),
])
def test_search_refuses_unusable_data_before_creating_anything(tmp_path, capsys, monkeypatch, make, needle):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "data")
    code, err = _run(["search", "--data", str(tmp_path / "data"), "--profiler", "proxy"], capsys)
    assert code == 2 and needle in err, err
    assert _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "no study.db, no zoo"


def test_search_storage_url_that_cannot_be_opened(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://ens:s3cret@127.0.0.1:1/nowhere"  # nothing listens on port 1
    code, err = _run(["search", "--storage", url, "--profiler", "proxy"], capsys)
    assert code == 2 and "cannot open storage" in err, err
    assert "s3cret" not in err, "the password must not be printed"
    assert _one_line(err)
    code, err = _run(["search", "--storage", "nosuchdb://x/y", "--profiler", "proxy"], capsys)
    assert code == 2 and "cannot open storage" in err and _one_line(err), err
    assert list(tmp_path.iterdir()) == []


def test_finalize_on_a_study_without_a_completed_trial(tmp_path, capsys):
    db = tmp_path / "study.db"
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="deblur-tiny",
                                directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"fail_reason": "worker lost"}))
    code, err = _run(["finalize", str(db), "--export", "onnx_int8", "--out", str(tmp_path / "final")], capsys)
    assert code == 2 and "no completed trial" in err, err
    assert _one_line(err)
    assert not (tmp_path / "final").exists()


def test_error_text_is_printed_as_written_not_as_markup(capsys):
    """A message holding ``[/...]`` (a path, a spec) once crashed rich's markup parser and lost the error."""
    code, err = _run(["profile", "--arch", "enc:T,T,T|lat:T|dec:T,T,T|ref:T", "--shape", "[/x]"], capsys)
    assert code == 2 and "[/x]" in err and "bad shape" in err, err
    assert _one_line(err)


@pytest.mark.parametrize("shape, needle", [
    ("1x3", "NxCxHxW with C = 3"),
    ("1x1x64x64", "NxCxHxW with C = 3"),
    ("1x3x4x4", "at least 8 px"),
    ("1x3x100000x100000", "too large"),
    ("128x3x64x64", "too large"),
])
def test_profile_and_search_bound_the_input_shape(shape, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["profile", "--arch", "enc:T,T,T|lat:T|dec:T,T,T|ref:T", "--shape", shape],
                 ["search", "--profiler", "proxy", "--shape", shape]):
        code, err = _run(argv, capsys)
        assert code == 2 and needle in err, (argv, err)
        assert _one_line(err)
    assert not list(tmp_path.iterdir()), "nothing created"


def test_report_into_an_unwritable_place_is_one_line(tmp_path, capsys):
    db = tmp_path / "s.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[30.0, 10.0], user_attrs={
        "arch": "enc:T,T,T|lat:T|dec:T,T,T|ref:T", "psnr": 30.0, "latency": 10.0}))
    code, err = _run(["report", str(db), "--out", "/dev/null/report"], capsys)
    assert code == 2 and "cannot write the report into /dev/null/report" in err, err
    assert _one_line(err)


def test_more_workers_than_cores_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(["search", "--profiler", "proxy", "--workers", "1000"], capsys)
    assert code == 2 and "--workers 1000" in err and "use at most" in err, err
    assert _one_line(err) and not list(tmp_path.iterdir())
