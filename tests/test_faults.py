"""Faults: interrupting a search, two writers on one SQLite study."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from ens.cli import main
from ens.training import checkpoint_step
from studies.lock import StudyLock
from tests.interrupts import sigint_reachable


def _complete(db) -> int:
    if not db.exists():
        return 0
    try:
        s = optuna.load_study(study_name="deblur-tiny", storage=f"sqlite:///{db}")
    except (KeyError, SQLAlchemyError):  # no study yet, or the driver is creating the tables as we look
        return 0
    return len(s.get_trials(states=(TrialState.COMPLETE,)))


def _search_cmd(trials: int) -> list[str]:
    return [sys.executable, "-c", "from ens.cli import main; main()", "search", "--profiler", "proxy", "--workers",
            "0", "--trials", str(trials), "--shape", "1x3x32x32", "--sampler", "random"]


def test_sigint_during_search_keeps_completed_trials_and_resumes(tmp_path, micro_zoo):
    shutil.copytree(micro_zoo, tmp_path / "zoo" / "deblur-tiny")
    db = tmp_path / "study.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(_search_cmd(40), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=sigint_reachable)
    deadline = time.monotonic() + 240
    while _complete(db) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "resume" in out
    kept = _complete(db)
    assert kept >= 2
    study = optuna.load_study(study_name="deblur-tiny", storage=f"sqlite:///{db}")
    assert not study.get_trials(states=(TrialState.RUNNING,)), "no trial is left RUNNING"
    target = kept + 1
    res = subprocess.run(_search_cmd(target), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _complete(db) >= target


def test_second_search_on_same_sqlite_is_refused(tmp_path, capsys, micro_zoo, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(micro_zoo, tmp_path / "zoo" / "deblur-tiny")
    with StudyLock(tmp_path / "study.db"):
        with pytest.raises(SystemExit) as exc:
            main(["search", "--profiler", "proxy", "--workers", "0", "--trials", "2", "--shape", "1x3x32x32"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "another ens search" in err and "Traceback" not in err


def test_sigint_during_the_zoo_build_keeps_the_steps_done_and_resumes(tmp_path):
    """Ctrl-C mid-teacher: exit 130, no zoo folder, a checkpoint at the last finished step (not the last
    periodic one); the same command then resumes from it and publishes the zoo."""
    cmd = [sys.executable, "-m", "ens.cli", "zoo", "build", "--task", "denoise", "--preset", "tiny", "--steps", "120",
           "--distill-steps", "2", "--calib-steps", "0", "--rank-steps", "0", "--quality-crop", "64",
           "--out", str(tmp_path / "zoo")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_reachable)
    for line in proc.stdout:
        if "[1/5] teacher" in line:
            break
    time.sleep(10.0)  # some of the 120 teacher steps (0.1-4 s each, loaded or not); checkpoints are 120 s apart
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    assert not (tmp_path / "zoo" / "denoise-tiny").exists()
    ckpt = tmp_path / "zoo" / ".denoise-tiny.work" / "teacher.ckpt.safetensors"
    done = checkpoint_step(ckpt)
    assert 0 < done < 120
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"(resuming at step {done})" in " ".join(res.stdout.split())
    assert (tmp_path / "zoo" / "denoise-tiny" / "manifest.json").is_file()
    assert not (tmp_path / "zoo" / ".denoise-tiny.work").exists()
