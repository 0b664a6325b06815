"""Bad input across every verb: exit code 2, one line on stderr, no traceback, and no file left behind.

``CASES`` is the table: each row makes what it needs in an empty folder (a study, a dataset, a junk
file), runs one command there, and checks the message; the folder must then hold only what the row made.
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from ens.cli import main
from ens.data.fakes import make_paired

ALL_T = "enc:T,T,T|lat:T|dec:T,T,T|ref:T"


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


# -- the table -------------------------------------------------------------------------------------
def _study(root: Path, complete: bool = True) -> str:
    db = root / "s.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", directions=["maximize", "minimize"])
    if complete:
        study.add_trial(optuna.trial.create_trial(values=[30.0, 10.0], user_attrs={
            "arch": ALL_T, "psnr": 30.0, "latency": 10.0}))
    return str(db)


def _junk(root: Path) -> str:
    (root / "junk.db").write_bytes(b"not a database " * 64)
    return str(root / "junk.db")


def _corrupt_train_png(root: Path) -> str:
    data = make_paired(root / "data", n=6, size=(80, 80))  # 'paired': the last pair is the validation split
    (data / "input" / "img000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return str(data)


def _huge_png(root: Path) -> str:
    """A PNG whose header claims 100000 x 100000 pixels (a decompression bomb's first bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = make_paired(root / "data", n=4, size=(80, 80))
    head = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (data / "target" / "img000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IEND", b""))
    return str(data)


def _file(root: Path) -> str:
    (root / "afile").write_text("x")
    return str(root / "afile")


CASES = [
    # search
    ("search-task", lambda r: ["search", "--task", "dehaze"], "unknown task"),
    ("search-objective", lambda r: ["search", "--objective", "psnr,speed"], "unknown objective"),
    ("search-sampler", lambda r: ["search", "--sampler", "grid"], "unknown sampler"),
    ("search-profiler", lambda r: ["search", "--profiler", "warp9"], "unknown profiler"),
    ("search-trials", lambda r: ["search", "--trials", "0"], "at least 1"),
    ("search-trials-text", lambda r: ["search", "--trials", "abc"], "valid integer"),
    ("search-no-such-option", lambda r: ["search", "--bogus"], "no such option"),
    ("search-workers", lambda r: ["search", "--workers", "-1"], "workers"),
    ("search-workers-1000", lambda r: ["search", "--profiler", "proxy", "--workers", "1000"], "use at most"),
    ("search-cpus-per-trial", lambda r: ["search", "--workers", "1", "--cpus-per-trial", "0"], "cpus-per-trial"),
    ("search-ray-unreachable", lambda r: ["search", "--ray-address", "127.0.0.1:1", "--workers", "1"],
     "cannot reach the ray cluster"),
    ("search-ray-malformed", lambda r: ["search", "--ray-address", "ray://nohost"], "expected auto"),
    ("search-preset", lambda r: ["search", "--preset", "huge"], "unknown preset"),
    ("search-granularity", lambda r: ["search", "--granularity", "pixel"], "granularity"),
    ("search-budget", lambda r: ["search", "--latency-budget", "-1"], "positive"),
    ("search-finetune", lambda r: ["search", "--finetune-steps", "-1"], "finetune-steps"),
    ("search-score-alpha", lambda r: ["search", "--score-alpha", "-1"], "score-alpha"),
    ("search-data-missing", lambda r: ["search", "--data", str(r / "nope")], "does not exist"),
    ("search-data-file", lambda r: ["search", "--data", _file(r)], "not a folder"),
    ("search-data-corrupt-train", lambda r: ["search", "--profiler", "proxy", "--data", _corrupt_train_png(r)],
     "cannot read image"),
    ("search-data-bomb", lambda r: ["search", "--profiler", "proxy", "--data", _huge_png(r)], "limit"),
    ("search-junk-db", lambda r: ["search", "--profiler", "proxy", "--storage", _junk(r)], "not a sqlite database"),
    ("search-db-in-missing-folder", lambda r: ["search", "--profiler", "proxy", "--storage", str(r / "no/s.db")],
     "does not exist"),
    ("search-spec-code-only-key", lambda r: ["search", "--profiler", "trt:ssh://x@127.0.0.1:1?runner=x"],
     "unknown option"),
    ("search-shape-huge", lambda r: ["search", "--profiler", "proxy", "--shape", "1x3x100000x100000"], "too large"),
    # profile
    ("profile-arch", lambda r: ["profile", "--arch", "x"], "malformed arch"),
    ("profile-kind", lambda r: ["profile", "--arch", ALL_T.replace("ref:T", "ref:Q")], "unknown block kind"),
    ("profile-no-arch", lambda r: ["profile"], "missing option"),
    ("profile-shape", lambda r: ["profile", "--arch", ALL_T, "--shape", "1x3"], "NxCxHxW"),
    ("profile-precision", lambda r: ["profile", "--arch", ALL_T, "--precision", "int4"], "precision"),
    ("profile-spec-value", lambda r: ["profile", "--arch", ALL_T, "--profiler", "ort-cpu?threads=abc"],
     "not an integer"),
    ("profile-spec-key", lambda r: ["profile", "--arch", ALL_T, "--profiler", "ort-cpu?bogus=1"], "unknown option"),
    ("profile-spec-bool", lambda r: ["profile", "--arch", ALL_T, "--profiler", "ort-cpu?spin=maybe"], "boolean"),
    ("profile-runs", lambda r: ["profile", "--arch", ALL_T, "--runs", "0"], "greater than or equal to 1"),
    # calibrate
    ("calibrate-predicting", lambda r: ["calibrate", "--profiler", "proxy"], "measured profiler"),
    ("calibrate-precision", lambda r: ["calibrate", "--precision", "int4"], "precision"),
    ("calibrate-shape", lambda r: ["calibrate", "--shape", "[/x]"], "bad shape"),
    # report
    ("report-missing", lambda r: ["report", str(r / "none.db")], "does not exist"),
    ("report-junk", lambda r: ["report", _junk(r)], "not a sqlite database"),
    ("report-no-study-name", lambda r: ["report", _study(r), "--study-name", "nope", "--out", str(r / "o")],
     "no study"),
    ("report-unwritable", lambda r: ["report", _study(r), "--out", "/dev/null/report"], "cannot write"),
    # finalize
    ("finalize-missing", lambda r: ["finalize", str(r / "none.db"), "--export", "onnx_int8"], "does not exist"),
    ("finalize-export", lambda r: ["finalize", _study(r), "--export", "bogus"], "unknown --export"),
    ("finalize-no-export", lambda r: ["finalize", _study(r)], "missing option"),
    ("finalize-trial", lambda r: ["finalize", _study(r), "--export", "onnx_fp32", "--trial", "999",
                                  "--out", str(r / "f")], "999"),
    ("finalize-weight-bits", lambda r: ["finalize", _study(r), "--export", "onnx_int8", "--weight-bits", "9"],
     "weight-bits"),
    ("finalize-no-complete", lambda r: ["finalize", _study(r, complete=False), "--export", "onnx_int8",
                                        "--out", str(r / "f")], "no completed trial"),
    # dashboard
    ("dashboard-missing", lambda r: ["dashboard", str(r / "none.db")], "does not exist"),
    ("dashboard-junk", lambda r: ["dashboard", _junk(r)], "not a sqlite database"),
    # zoo
    ("zoo-show-missing", lambda r: ["zoo", "show", str(r / "nozoo")], "not a zoo"),
    ("zoo-build-task", lambda r: ["zoo", "build", "--task", "dehaze"], "unknown task"),
    ("zoo-build-preset", lambda r: ["zoo", "build", "--preset", "huge"], "unknown preset"),
    ("zoo-build-steps", lambda r: ["zoo", "build", "--steps", "-5"], "greater than or equal to 1"),
    ("zoo-build-data-corrupt", lambda r: ["zoo", "build", "--task", "derain", "--data", _corrupt_train_png(r),
                                          "--out", str(r / "zoo")], "cannot read image"),
    ("zoo-build-device", lambda r: ["zoo", "build", "--device", "npu"], "expected auto, cpu, cuda or cuda:N"),
    ("zoo-build-amp", lambda r: ["zoo", "build", "--amp", "fp8"], "expected one of auto, bf16, fp16, off"),
    ("zoo-build-fp16-cpu", lambda r: ["zoo", "build", "--device", "cpu", "--amp", "fp16"], "needs a CUDA device"),
    ("zoo-build-gpus", lambda r: ["zoo", "build", "--gpus", "0"], "greater than or equal to 1"),
    ("search-device", lambda r: ["search", "--device", "cuda:x", "--workers", "0"], "expected auto, cpu, cuda"),
    ("search-amp", lambda r: ["search", "--amp", "fp8", "--workers", "0"], "expected one of auto, bf16"),
    ("finalize-device", lambda r: ["finalize", _study(r), "--export", "onnx_int8", "--device", "Galaxy S24",
                                   "--out", str(r / "f")], "the AI Hub device is --hub-device"),
    # data and tasks
    ("data-preview-split", lambda r: ["data", "preview", "--task", "deblur", "--split", "test"], "--split"),
    ("data-preview-n", lambda r: ["data", "preview", "--task", "deblur", "--n", "0"], "greater than or equal"),
    ("data-check-missing", lambda r: ["data", "check", "--task", "deblur", "--data", str(r / "nope")],
     "does not exist"),
    ("data-check-corrupt", lambda r: ["data", "check", "--task", "derain", "--data", _corrupt_train_png(r)],
     "cannot read image"),
    ("tasks-option", lambda r: ["tasks", "--bogus"], "no such option"),
]


def test_the_table_is_long_and_covers_every_verb(tmp_path):
    assert len(CASES) >= 40
    verbs = {make(tmp_path / name)[0] for name, make, _ in CASES if (tmp_path / name).mkdir() is None}
    assert verbs >= {"search", "profile", "calibrate", "report", "finalize", "dashboard", "zoo", "data", "tasks"}


@pytest.mark.parametrize("case, make_argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_table(case, make_argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = make_argv(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    code, err = _run(argv, capsys)
    assert code == 2, (argv, err)
    assert needle.lower() in err.lower(), (argv, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before, f"{case} left files behind: {sorted(set(after) - set(before))}"
