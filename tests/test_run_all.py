"""bench/run_all.py: which winners it finalizes, the table it writes, and a failed run keeping what it measured."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "run_all.py"
_spec = importlib.util.spec_from_file_location("bench_run_all", _PATH)
run_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_all)


def _task(teacher: float, inp: float, best: int | None = 3, int8_best: int | None = None) -> dict:
    r = {"teacher_psnr": teacher, "input_psnr": inp, "best": {"trial": best} if best is not None else None}
    if int8_best is not None:
        r["speedup"] = {"int8": {"best": {"trial": int8_best}}}
    return r


def test_finalize_tasks_all_list_auto_and_a_bad_name():
    tasks = {"deblur": _task(31.1, 31.0), "derain": _task(26.5, 21.2), "denoise": _task(31.2, 19.2)}
    assert run_all.finalize_tasks(tasks, "all") == ["deblur", "derain", "denoise"]
    assert run_all.finalize_tasks(tasks, "derain,deblur") == ["derain", "deblur"]
    assert run_all.finalize_tasks(tasks, "auto") == ["denoise"]  # the largest teacher gain over its input
    tasks["denoise"]["input_psnr"] = math.inf  # a gain that cannot be measured is not the largest
    assert run_all.finalize_tasks(tasks, "auto") == ["derain"]
    with pytest.raises(SystemExit, match="sharpen is not among the tasks run"):
        run_all.finalize_tasks(tasks, "deblur,sharpen")


def test_finalize_trial_prefers_the_int8_winner():
    assert run_all.finalize_trial(_task(30, 20, best=3, int8_best=7)) == {"trial": 7}
    assert run_all.finalize_trial(_task(30, 20, best=3)) == {"trial": 3}
    assert run_all.finalize_trial(_task(30, 20, best=None)) is None


def _fin(task: str, trial: int, int8: float) -> dict:
    return {"task": task, "trial": trial, "command": f"ens finalize {task}.db --trial {trial}", "fp32_psnr": 31.0,
            "int8_psnr": int8, "qdr_recovery_pct": 99.2, "ptq_recovery_pct": 98.9, "int8_ms": 20.0,
            "fp32_ms": 50.0, "speedup": 2.5}


def test_table_has_a_finalize_row_per_task_and_reads_the_older_single_record():
    res = {"tasks": {}, "finalize": {"derain": _fin("derain", 14, 26.0), "denoise": _fin("denoise", 13, 30.5)}}
    text = run_all.table(res)
    assert "| derain: INT8 (QDR) PSNR recovery, ORT, trial 14 | 99.2% (26.00 / 31.00 dB)" in text
    assert "| denoise: INT8 vs its own FP32 export, ort-cpu latency (inside finalize) | 20.0 vs 50.0 ms (2.5x)" in text
    res["tasks"]["denoise"] = {"teacher_psnr": 31.25, "input_psnr": 19.19, "best": None, "search_command": "s"}
    assert "-0.75 dB vs the FP32 teacher" in run_all.table(res)
    old = run_all.table({"tasks": {}, "finalize": _fin("denoise", 13, 30.5)})  # records before 2026-12-04
    assert "| denoise: INT8 (QDR) PSNR recovery, ORT, trial 13 |" in old


def test_a_failed_step_keeps_what_was_measured(tmp_path, monkeypatch):
    scan = {"selective_scan_speedup": 4.8, "selective_scan_max_abs_err": 7e-6, "ssd_scan_speedup": 12.0,
            "ssd_scan_max_abs_err": 4e-6}

    def fake_run(cmd, log, capture=True, cwd=None):  # the subprocess boundary: the scan runs, calibrate fails
        log.append({"command": " ".join(cmd[1:3]), "wall_s": 0.0, "rc": 0})
        if "bench/bench_scan.py" in cmd:
            return json.dumps(scan), 0.0
        raise SystemExit("run_all: command failed (2): ens calibrate")

    monkeypatch.setattr(run_all, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--tasks", "", "--skip", "finalize,throughput",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="ens calibrate"):
        run_all.main()
    saved = json.loads((tmp_path / "run_all.json").read_text())
    assert saved["scan"]["selective_scan_speedup"] == 4.8
    assert saved["incomplete"] == "run_all: command failed (2): ens calibrate"
    assert "lut" not in saved and len(saved["load_average_end"]) == 3
    assert not list(tmp_path.glob("*.tmp*"))  # written whole, no partial file left

    def broken_run(cmd, log, capture=True, cwd=None):  # a bug, not a failed command: still marked incomplete
        raise KeyError("selective_scan_speedup")

    monkeypatch.setattr(run_all, "run", broken_run)
    with pytest.raises(KeyError):
        run_all.main()
    assert json.loads((tmp_path / "run_all.json").read_text())["incomplete"] == "KeyError: 'selective_scan_speedup'"


def test_figure_a_on_whole_images_counts_only_the_candidates_that_hold_there():
    a, b, c = "enc:E|a", "enc:L|b", "enc:G|c"
    sp = {"speedup": 2.0, "all_t_ms": 200.0, "arch_ms": 50.0, "best": {"psnr": 30.8}, "commands": ["t", "p"],
          "candidates_ms": {a: 100.0, b: 50.0, c: 80.0}}
    rows = [{"arch": a, "whole_loss_db": 0.2, "within_target": True},
            {"arch": b, "whole_loss_db": 0.6, "within_target": False},
            {"arch": c, "whole_loss_db": 0.1, "within_target": True}]
    r = {"teacher_psnr": 31.0, "input_psnr": 25.0, "best": {"psnr": 30.8}, "search_command": "s", "speedup": sp,
         "whole_check": {"rows": rows}}
    wi = run_all.whole_image_speedup(r)
    # b is the fastest measured (the patch figure, 4x) but loses 0.6 dB on whole images: c, 80 ms, is the figure
    assert (wi["arch"], wi["speedup"], wi["held"], wi["checked"]) == (c, 2.5, 2, 3)
    text = run_all.table({"tasks": {"derain": r}})
    assert "(2 of 3; their losses there 0.20 / 0.60 / 0.10 dB) | 2.5x (200.0 → 80.0 ms; `enc:G\\|c`" in text
    for row in rows:
        row["within_target"] = False
    assert run_all.whole_image_speedup(r)["held"] == 0
    assert "(0 of 3; their losses there 0.20 / 0.60 / 0.10 dB) | none |" in run_all.table({"tasks": {"derain": r}})
    del r["whole_check"]
    assert run_all.whole_image_speedup(r) is None and "whole held-out" not in run_all.table({"tasks": {"derain": r}})


def test_a_search_scored_on_whole_images_says_so_in_the_table():
    sp = {"speedup": 2.0, "all_t_ms": 200.0, "arch_ms": 100.0, "best": {"psnr": 30.8}, "commands": ["t", "p"],
          "candidates_ms": {"enc:E|a": 100.0}}
    r = {"teacher_psnr": 31.0, "input_psnr": 25.0, "best": {"psnr": 30.8}, "search_command": "s", "speedup": sp,
         "candidates": [{"arch": "enc:E|a"}], "val": "whole"}
    text = run_all.table({"tasks": {"derain": r}})
    assert "trials there (whole held-out images), measured" in text
    assert "held-out patches" not in text  # no patch row: the teacher's PSNR above is on whole images
    r["val"] = "patches"
    text = run_all.table({"tasks": {"derain": r}})
    assert "trials there (held-out patches), measured" in text and "PSNR (dB), held-out patches |" in text
