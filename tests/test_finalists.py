"""``ens search --time-finalists``: the fastest trials within the target, timed beside all-T."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from ens.errors import EnsError
from ens.search.finalists import STUDY_ATTR, pick_finalists, time_finalists
from profilers.base import Profiler
from profilers.onnx_info import read_metadata
from profilers.result import LatencyResult
from search_spaces.arch import Arch

ALL_T = str(Arch.uniform("T"))


def _study(rows: list[tuple[str, float, float]], dup: str | None = None) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for arch, psnr, lat in rows:
        attrs = {"arch": arch, "psnr": psnr, "latency": lat}
        if arch == dup:
            attrs["duplicate_of"] = 0
        study.add_trial(optuna.trial.create_trial(values=[psnr, lat], user_attrs=attrs))
    return study


A, B, C, D, E = ("enc:E,E,E|lat:E|dec:E,E,E|ref:E", "enc:L,L,L|lat:L|dec:L,L,L|ref:L",
                 "enc:G,G,G|lat:G|dec:G,G,G|ref:G", "enc:M,M,M|lat:M|dec:M,M,M|ref:M",
                 "enc:F,F,F|lat:F|dec:F,F,F|ref:F")


def test_the_fastest_within_the_target_one_per_architecture():
    study = _study([(ALL_T, 30.0, 200.0), (A, 29.8, 90.0), (B, 29.5, 40.0), (C, 29.9, 60.0), (C, 29.9, 60.0),
                    (D, 30.1, 150.0), (E, 29.75, 60.0)])
    ref, picked = pick_finalists(study, 3, 0.3)
    assert ref.user_attrs["arch"] == ALL_T
    # B loses 0.5 dB: out; C twice: once; C and E tie at 60 ms: the better PSNR first
    assert [t.user_attrs["arch"] for t in picked] == [C, E, A]
    assert [t.user_attrs["arch"] for t in pick_finalists(study, 10, 0.3)[1]] == [C, E, A, D]
    assert pick_finalists(study, 3, 0.6)[1][0].user_attrs["arch"] == B


def test_duplicates_are_skipped_and_all_t_is_needed():
    assert [t.user_attrs["arch"] for t in pick_finalists(_study([(ALL_T, 30.0, 200.0), (A, 29.9, 90.0)], dup=A),
                                                          3, 0.3)[1]] == []
    with pytest.raises(EnsError, match="no all-T trial"):
        pick_finalists(_study([(A, 29.9, 90.0)]), 3, 0.3)


class FakeMeasurer(Profiler):
    """The device boundary: 'measures' each exported file by its arch (read back from the ONNX metadata)."""

    name = "fake-measured"
    device = "fake"

    def __init__(self, ms: dict[str, list[float]]) -> None:
        self.ms, self.calls = ms, []

    def measure(self, onnx_path, input_shape, precision=None) -> LatencyResult:
        raise AssertionError("finalists are timed interleaved, with measure_many")

    def measure_many(self, onnx_paths, input_shape, precision=None) -> list[LatencyResult]:
        archs = [read_metadata(p)["arch"] for p in onnx_paths]
        self.calls.append((archs, tuple(input_shape), precision))
        batch = len(self.calls) - 1
        return [LatencyResult(self.ms[a][batch], float("nan"), 5, "fake", profiler=self.name) for a in archs]


def test_timed_beside_all_t_in_batches(micro_zoo):
    from ens.zoo.store import Zoo

    zoo = Zoo.load(micro_zoo)
    kinds = {s: len(v) for s, v in zoo.supernet().stages.items()}
    t = str(Arch.uniform("T"))
    e, m = (str(Arch.from_block_kinds({s: [k] * d for s, d in kinds.items()})) for k in ("E", "M"))
    study = _study([(t, 30.0, 20.0), (e, 29.9, 8.0), (m, 29.8, 12.0)])
    fake = FakeMeasurer({t: [20.0, 30.0, 21.0], e: [10.0, 99.0, 11.0], m: [5.0, 6.0, 7.0]})
    lines: list[str] = []
    rows = time_finalists(study, 2, 0.3, fake, zoo.config, (1, 3, 32, 32), "fp32", batches=3, log=lines.append)
    assert [c[0] for c in fake.calls] == [[t, e, m]] * 3, "all-T first, then the finalists, in every batch"
    assert fake.calls[0][1:] == ((1, 3, 32, 32), "fp32")
    # medians over the batches: all-T 21, E 11, M 6
    assert [(r.arch, r.measured_ms, r.study_ms) for r in rows] == [(e, 11.0, 8.0), (m, 6.0, 12.0)]
    assert [r.speedup for r in rows] == [round(21 / 11, 3), 3.5]
    saved = study.user_attrs[STUDY_ATTR]
    assert saved["all_t_ms"] == 21.0 and saved["profiler"] == "fake-measured" and len(saved["rows"]) == 2
    assert "fastest measured trial 2" in lines[-1] and "3.50x" in lines[-1]
    # a later run with nothing within the target leaves no stale finalists behind
    assert time_finalists(study, 2, 0.05, fake, zoo.config, (1, 3, 32, 32), "fp32", log=lines.append) == []
    assert study.user_attrs[STUDY_ATTR]["rows"] == [] and len(fake.calls) == 3
    assert "no trial within 0.05 dB" in lines[-1]


def test_a_search_times_its_finalists_on_the_tables_profiler(micro_zoo, tmp_path, capsys, monkeypatch):
    """The real path through ``ens search``: lut:ort-cpu predicts in the trials, ort-cpu times the finalists."""
    from ens.cli import main
    from ens.report import load_study
    from ens.zoo.store import Zoo
    from tests.latency_tables import micro_table

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    shutil.copytree(micro_zoo, tmp_path / "zoo" / "deblur-tiny")
    micro_table(Zoo.load(micro_zoo), (1, 3, 32, 32), None)
    args = ["search", "--profiler", "lut:ort-cpu", "--trials", "4", "--workers", "0", "--shape", "1x3x32x32",
            "--sampler", "random", "--no-zoo-front", "--zoo-front-target", "100", "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--time-finalists", "2"])
    out = capsys.readouterr().out
    assert done.value.code in (0, None)
    saved = load_study("study.db").user_attrs[STUDY_ATTR]
    assert saved["profiler"] == "ort-cpu" and len(saved["rows"]) == 2
    assert saved["all_t_ms"] > 0 and all(r["measured_ms"] > 0 and r["speedup"] > 0 for r in saved["rows"])
    assert "Finalists within 100 dB of all-T, timed beside it on ort-cpu" in out
    assert f"{saved['rows'][0]['speedup']:.2f}x" in out and "fastest measured trial" in out
    with pytest.raises(SystemExit) as refused:
        main([*args, "--profiler", "proxy", "--storage", "p.db", "--time-finalists", "1"])
    assert refused.value.code not in (0, None)
    assert "--time-finalists needs a measured profiler" in capsys.readouterr().err
    assert not Path("p.db").exists(), "refused before a study is made"
    assert "ens finalize study.db --export onnx_int8 --pick finalist" in out

    # the report lists them, fastest first, and finalize's --pick finalist takes that one
    from ens.finalize.pick import pick_trial

    best = max(saved["rows"], key=lambda r: r["speedup"])
    with pytest.raises(SystemExit) as reported:
        main(["report", "study.db", "--out", "report"])
    assert reported.value.code in (0, None)
    text = Path("report/finalists.md").read_text()
    assert "timed interleaved beside all-T" in text and text.index(best["arch"].replace("|", "\\|")) < text.index(
        min(saved["rows"], key=lambda r: r["speedup"])["arch"].replace("|", "\\|"))
    assert "Finalists, measured" in Path("report/pareto.html").read_text()
    picked = pick_trial(load_study("study.db"), pick="finalist")
    assert (picked.number, picked.arch, picked.how) == (best["trial"], best["arch"], "finalist")


def test_pick_finalist_needs_timed_finalists():
    from ens.finalize.pick import PickError, pick_trial

    study = _study([(ALL_T, 30.0, 200.0), (A, 29.9, 90.0), (B, 29.8, 40.0)])
    with pytest.raises(PickError, match="run ens search with --time-finalists K"):
        pick_trial(study, pick="finalist")
    study.set_user_attr(STUDY_ATTR, {"rows": []})
    with pytest.raises(PickError, match="no finalist was within reach"):
        pick_trial(study, pick="finalist")
    rows = [{"trial": 1, "arch": A, "speedup": 2.2}, {"trial": 2, "arch": B, "speedup": 2.9}]
    study.set_user_attr(STUDY_ATTR, {"rows": rows})
    assert pick_trial(study, pick="finalist").number == 2
    study.set_user_attr(STUDY_ATTR, {"rows": [{"trial": 7, "arch": A, "speedup": 3.0}]})
    with pytest.raises(PickError, match="trial 7 of the finalists is not a completed trial"):
        pick_trial(study, pick="finalist")
