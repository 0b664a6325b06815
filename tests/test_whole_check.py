"""``ens search --whole-check``: the search's picks within the target, scored again on whole held-out images."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import torch

from ens.search.whole_check import STUDY_ATTR, check_on_whole_images
from search_spaces.arch import Arch


def _study(rows: list[tuple[str, float, float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for arch, psnr, lat in rows:
        study.add_trial(optuna.trial.create_trial(values=[psnr, lat],
                                                  user_attrs={"arch": arch, "psnr": psnr, "latency": lat}))
    return study


def test_picks_are_scored_on_whole_images_against_all_t(micro_zoo):
    from ens.evaluate import evaluate
    from ens.tasks import get_task
    from ens.zoo.build import held_out_images
    from ens.zoo.store import Zoo

    zoo, task = Zoo.load(micro_zoo), get_task("deblur")
    pairs = held_out_images(task, None, 2, crop=40)
    depth = {s: len(v) for s, v in zoo.supernet().stages.items()}
    t, e, m, i = (str(Arch.from_block_kinds({s: [k] * d for s, d in depth.items()})) for k in ("T", "E", "M", "I"))
    # patch PSNRs: E and M within 0.3 dB of all-T, the skip (I) far below; E the fastest
    study = _study([(t, 30.0, 20.0), (e, 29.9, 8.0), (m, 29.8, 12.0), (i, 20.0, 1.0)])

    def whole(arch: str) -> float:
        with torch.no_grad():
            return evaluate(zoo.build(arch).eval(), pairs, task).psnr

    lines: list[str] = []
    rows = check_on_whole_images(study, 5, 0.3, zoo, task, pairs, log=lines.append)
    assert [r.arch for r in rows] == [e, m], "the fastest within the target on the patches, the skip left out"
    assert [r.patch_loss_db for r in rows] == [pytest.approx(0.1), pytest.approx(0.2)]
    for r in rows:  # each network rebuilt from the zoo and scored independently
        assert r.whole_psnr == pytest.approx(whole(r.arch), abs=1e-3)
        assert r.whole_loss_db == pytest.approx(whole(t) - whole(r.arch), abs=1e-3)
        assert r.within_target == (r.whole_loss_db <= 0.3)
    saved = study.user_attrs[STUDY_ATTR]
    assert saved["images"] == 2 and saved["all_t_trial"] == 0 and len(saved["rows"]) == 2
    assert saved["all_t_psnr"] == pytest.approx(whole(t), abs=1e-3)
    assert f"{sum(r.within_target for r in rows)} of 2 trials within 0.3 dB" in lines[-1]
    # nothing within a tighter target: the record is emptied, not left from the run before
    assert check_on_whole_images(study, 5, 0.05, zoo, task, pairs, log=lines.append) == []
    assert study.user_attrs[STUDY_ATTR]["rows"] == [] and "no trial within 0.05 dB" in lines[-1]


def test_a_search_checks_its_picks_on_whole_images(micro_zoo, tmp_path, capsys, monkeypatch):
    from ens.cli import main
    from ens.report import load_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    shutil.copytree(micro_zoo, tmp_path / "zoo" / "deblur-tiny")
    args = ["search", "--profiler", "proxy", "--trials", "4", "--workers", "0", "--shape", "1x3x32x32",
            "--sampler", "random", "--no-zoo-front", "--zoo-front-target", "100", "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--whole-check", "2"])
    out = capsys.readouterr().out
    assert done.value.code in (0, None)
    saved = load_study("study.db").user_attrs[STUDY_ATTR]
    assert saved["images"] == 2 and 1 <= len(saved["rows"]) <= 2  # the embedded data's two held-out images
    assert all(r["within_target"] for r in saved["rows"])  # within 100 dB, on patches and whole images alike
    assert "whole held-out image(s): all-T" in out and saved["rows"][0]["arch"] in out
    with pytest.raises(SystemExit) as refused:
        main([*args, "--storage", "x.db", "--whole-check", "-1"])
    assert refused.value.code not in (0, None)
    # the report lists them too
    with pytest.raises(SystemExit) as reported:
        main(["report", "study.db", "--out", "report"])
    assert reported.value.code in (0, None)
    assert "summary.json, whole_images.md" in capsys.readouterr().out  # the closing line names what it wrote
    text = Path("report/whole_images.md").read_text()
    assert "scored on 2 whole held-out image(s)" in text and saved["rows"][0]["arch"].replace("|", "\\|") in text
    assert "Checked on whole images" in Path("report/pareto.html").read_text()


def test_a_search_scored_on_whole_images_scores_trials_and_front_there(micro_zoo, tmp_path):
    """``--val whole``: every trial's PSNR and the zoo front's swaps are measured on the whole held-out images,
    the study records it (and refuses to be resumed on patches), and the dashboard's names and notes say so."""
    from optuna.trial import TrialState

    from ens.errors import EnsError
    from ens.evaluate import evaluate
    from ens.search.driver import SearchOptions, run_search
    from ens.tasks import get_task
    from ens.zoo.build import held_out_images
    from ens.zoo.store import Zoo
    from studies.errors import StudyError
    from tests.latency_tables import micro_table

    try:
        import optuna_dashboard
    except ImportError:  # the notes are skipped without it
        optuna_dashboard = None

    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo, root / "deblur-tiny")
    zoo, task = Zoo.load(root / "deblur-tiny"), get_task("deblur")
    micro_table(zoo, (1, 3, 32, 32), verify_pct=None)
    whole = held_out_images(task, None, 1)
    assert whole[0][0].shape[-2:] == (296, 448)  # the first of the embedded data's whole held-out images
    lines: list[str] = []
    opts = SearchOptions(task="deblur", profiler="lut:ort-cpu", trials=4, workers=0, storage=str(tmp_path / "s.db"),
                         zoo_root=str(root), shape="1x3x32x32", sampler="random", kinds="T,E", zoo_front_rounds=1,
                         val="whole", val_images=1, device="cpu")
    study, _ = run_search(opts, log=lines.append)
    assert study.user_attrs["val"] == "whole" and study.user_attrs["val_label"] == "1 whole held-out image"
    assert study.metric_names[0] == "PSNR (dB, 1 whole image)"
    assert any(x.startswith("zoo front: scoring the") and "on the 1 whole held-out image," in x for x in lines)

    def on_whole(arch: str) -> float:
        with torch.no_grad():
            return evaluate(zoo.build(arch).eval(), whole, task).psnr

    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 3
    for t in done[:3]:  # rebuilt from the zoo and scored independently on the whole images
        assert t.user_attrs["psnr"] == pytest.approx(on_whole(t.user_attrs["arch"]), abs=1e-3)
        assert t.user_attrs["val_label"] == "1 whole held-out image"
        note = optuna_dashboard.get_note(optuna.trial.Trial(study, t._trial_id)) if optuna_dashboard else ""
        assert not optuna_dashboard or "SSIM" in note and "(1 whole held-out image)" in note
    swaps = study.user_attrs["single_swaps"]
    assert swaps["teacher_psnr"] == pytest.approx(on_whole(str(Arch.uniform("T"))), abs=1e-3)

    from ens.report import load_study, write_report

    write_report(load_study(tmp_path / "s.db"), tmp_path / "report")
    assert "swapped, on the 1 whole held-out image:" in (tmp_path / "report" / "single_swaps.md").read_text()

    resumed = SearchOptions(**{**opts.__dict__, "val": "patches"})
    with pytest.raises(StudyError, match="--val whole"):  # one study holds PSNRs measured one way only
        run_search(resumed, log=lines.append)
    for bad, msg in (({"val": "tiles"}, "unknown --val 'tiles'"), ({"val_images": 0}, "--val-images must be"),
                     ({"whole_check": 2}, "already scored on the whole held-out images")):
        with pytest.raises(EnsError, match=msg):
            run_search(SearchOptions(**{**opts.__dict__, "study_name": "x", **bad}), log=lines.append)
