"""Bad input through the CLI: one line on stderr, exit code 2, no traceback, nothing created."""

from __future__ import annotations

import re
import shutil
import sqlite3

import pytest

from ens.cli import main


def _run(argv, capsys):
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--task", "dehaze"], "unknown task"),
        (["--objective", "psnr,speed"], "unknown objective"),
        (["--sampler", "grid"], "unknown sampler"),
        (["--profiler", "warp9"], "profiler"),
        (["--trials", "0"], "at least 1"),
        (["--trials", "-3"], "at least 1"),
        (["--workers", "-1"], "workers"),
        (["--preset", "huge"], "unknown preset"),
        (["--shape", "1x3xbig"], "shape"),
        (["--granularity", "pixel"], "granularity"),
    ],
)
def test_search_bad_input(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["search", *args], capsys)
    assert code == 2, err
    assert needle in err.lower()
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "zoo").exists(), "bad input must not start a zoo build"
    assert not (tmp_path / "study.db").exists()


def test_search_missing_data_dir(tmp_path, capsys):
    code, _, err = _run(["search", "--data", str(tmp_path / "nope"), "--storage", str(tmp_path / "s.db")], capsys)
    assert code == 2 and "does not exist" in err


def test_corrupt_and_foreign_databases(tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage" * 100)
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("create table t (x)")
    con.commit()
    con.close()
    for verb in (["report"], ["search", "--storage"]):
        for db, msg in ((junk, "not a SQLite"), (foreign, "not an Optuna")):
            argv = [*verb, str(db)]
            code, _, err = _run(argv, capsys)
            assert code == 2 and msg in err, (verb, err)
    assert junk.read_bytes() == b"garbage" * 100, "a bad database is never written"
    code, _, err = _run(["report", str(tmp_path / "none.db")], capsys)
    assert code == 2 and "does not exist" in err


def test_report_on_empty_study(tmp_path, capsys):
    import optuna

    optuna.create_study(study_name="e", storage=f"sqlite:///{tmp_path / 'e.db'}", directions=["maximize"])
    code, _, err = _run(["report", str(tmp_path / "e.db")], capsys)
    assert code == 2 and "no completed trial" in err


def test_zoo_show_errors(tmp_path, capsys, micro_zoo):
    code, _, err = _run(["zoo", "show", str(tmp_path)], capsys)
    assert code == 2 and "manifest.json is missing" in err
    code, out, _ = _run(["zoo", "show", str(micro_zoo)], capsys)
    assert code == 0 and "deblur" in out and "teacher" in out
    assert re.search(r"teacher \d+ \(\d+ s\), distil \d+ \(\d+ s\), calibration \d+", out)


def test_search_report_cli_end_to_end(tmp_path, capsys, micro_zoo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    shutil.copytree(micro_zoo, tmp_path / "zoo" / "deblur-tiny")
    code, out, err = _run(["search", "--profiler", "proxy", "--trials", "3", "--workers", "0", "--shape",
                           "1x3x32x32", "--device", "cpu", "--amp", "off"], capsys)
    assert code == 0, err
    assert "Pareto front" in out and "ens dashboard study.db" in out and "ens finalize study.db" in out
    assert "search 3/3 last: enc:" in out  # redirected output (not a terminal) gets plain progress lines
    code, out, err = _run(["report", "study.db", "--out", "rep"], capsys)
    assert code == 0, err
    assert (tmp_path / "rep" / "pareto.png").stat().st_size > 1000


def test_every_verb_has_help(capsys):
    for verb in (["search"], ["report"], ["dashboard"], ["zoo", "build"], ["zoo", "show"], ["finalize"],
                 ["profile"], ["calibrate"], ["tasks"], ["data", "preview"]):
        code, out, _ = _run([*verb, "--help"], capsys)
        assert code == 0 and "Usage" in out, verb


def test_progress_lines_keep_long_paths_whole_when_redirected(capsys):
    from ens.cli.app import log_line

    path = "/root/.cache/ens/latency/tables/" + "x" * 120 + ".json"
    log_line(f"latency table written to {path}")
    out = capsys.readouterr().out
    assert path in out and out.count("\n") == 1
