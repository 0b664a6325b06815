"""The additive front (exact against brute force) and ``ens search --zoo-front``'s enqueued architectures."""

from __future__ import annotations

import itertools
import random
import shutil

import pytest
from optuna.trial import TrialState

from blocks import UNetConfig
from blocks.unet import stage_layout
from ens.report import ALL_T
from ens.search.driver import SearchOptions, run_search
from ens.search.zoo_front import predicted_front, slot_options
from search_spaces.additive import FrontPoint, additive_front, fastest_within
from search_spaces.arch import Arch

CFG = UNetConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))


def _brute_front(options):
    points = []
    for combo in itertools.product(*[list(o.items()) for o in options]):
        points.append(FrontPoint(sum(v[0] for _, v in combo), sum(v[1] for _, v in combo),
                                 tuple(k for k, _ in combo)))
    return [p for p in points if not any((q.loss <= p.loss and q.cost < p.cost) or
                                         (q.loss < p.loss and q.cost <= p.cost) for q in points)]


@pytest.mark.parametrize("seed", range(6))
def test_additive_front_is_the_exact_pareto_front(seed):
    rng = random.Random(seed)
    options = [{k: (round(rng.uniform(0, 1), 2), round(rng.uniform(1, 10), 1)) for k in "TMEI"[:rng.randint(1, 4)]}
               for _ in range(rng.randint(1, 5))]
    front = additive_front(options)
    brute = _brute_front(options)
    assert {(round(p.loss, 9), round(p.cost, 9)) for p in front} == {(round(p.loss, 9), round(p.cost, 9))
                                                                     for p in brute}
    for p in front:  # each point's choice adds up to its totals
        assert p.loss == pytest.approx(sum(options[i][k][0] for i, k in enumerate(p.choice)))
        assert p.cost == pytest.approx(sum(options[i][k][1] for i, k in enumerate(p.choice)))
    for budget in (0.0, 0.3, 1.0, 5.0):
        best = fastest_within(front, budget)
        ok = [p for p in brute if p.loss <= budget + 1e-12]
        assert (best is None) == (not ok)
        if ok:
            assert best.cost == pytest.approx(min(p.cost for p in ok))
    with pytest.raises(ValueError, match="slot 1"):
        additive_front([{"T": (0, 1)}, {}])


def _swaps(cfg, values):
    return {f"{s.name}.{i}": dict(values) for s in stage_layout(cfg) for i in range(s.depth)}


def test_slot_options_sum_positions_and_bank_no_gains():
    swap = _swaps(CFG, {"M": -0.1, "E": 0.4})  # E gains on its own: counted as no loss
    del swap["lat.1"]["M"]  # a kind without a figure at one block of a stage is not offered there
    costs = {s.name: {"T": 5.0, "M": 2.0, "E": 1.0} for s in stage_layout(CFG)}
    by_stage = dict(zip([s.name for s in stage_layout(CFG)], slot_options(swap, costs, CFG, ["T", "M", "E"], "stage"),
                        strict=True))
    assert by_stage["enc2"] == {"T": (0.0, 10.0), "M": (pytest.approx(0.2), 4.0), "E": (0.0, 2.0)}
    assert "M" not in by_stage["lat"] and by_stage["enc1"]["M"] == (pytest.approx(0.1), 2.0)
    per_block = slot_options(swap, costs, CFG, ["T", "M", "E"], "block")
    assert len(per_block) == sum(s.depth for s in stage_layout(CFG)) and per_block[1]["M"] == (pytest.approx(0.1), 2.0)


def test_predicted_front_takes_the_cheap_slots_first():
    """Swaps cost 0.05 dB everywhere but at enc1 (1 dB): every budget under 1 dB keeps T at enc1."""
    swap = _swaps(CFG, {"E": -0.05})
    swap["enc1.0"]["E"] = -1.0
    costs = {s.name: {"T": 5.0, "E": 1.0} for s in stage_layout(CFG)}
    seeds = predicted_front(swap, 3.0, costs, CFG, ["T", "E"], budgets=(0.05, 0.3, 0.5, 2.0))
    assert [s.budget_db for s in seeds] == [0.05, 0.3, 0.5, 2.0]
    assert str(seeds[-1].arch) == str(Arch.uniform("E"))
    for s in seeds:
        assert s.loss_db <= s.budget_db + 1e-9
        assert s.latency_ms == pytest.approx(3.0 + sum(5.0 if k == "T" else 1.0 for ks in
                                                      s.arch.block_kinds(CFG).values() for k in ks))
        if s.budget_db < 1.0:
            assert s.arch.block_kinds(CFG)["enc1"] == ["T"]
    assert seeds[1].arch.block_kinds(CFG)["lat"] == ["E", "E"]  # 0.3 dB buys three 2-block stages of 0.1 each
    assert predicted_front(_swaps(CFG, {"E": -5.0}), 3.0, costs, CFG, ["T", "E"], budgets=(0.3,)) == []


def _save_table(cfg, kinds, costs, shape=(1, 3, 32, 32)):
    from profilers.lut import LatencyTable
    from profilers.ort_cpu import OrtCpuProfiler

    prof = OrtCpuProfiler()
    stages = {s.name: s.depth for s in stage_layout(cfg)}
    table = LatencyTable(profiler=prof.spec, device=prof.device, precision="fp32", input_shape=shape,
                         config=cfg.to_dict(), kinds=tuple(kinds), stages=stages, skeleton_ms=2.0,
                         costs={s: dict(costs[s]) for s in stages})
    return table.save(table.default_path())


def test_single_swaps_score_each_position_as_a_trial_would(micro_zoo):
    from ens.data import load_pairs
    from ens.evaluate import evaluate
    from ens.search.zoo_front import single_swaps
    from ens.tasks import get_task
    from ens.zoo.store import Zoo

    zoo, task = Zoo.load(micro_zoo), get_task("deblur")
    val = load_pairs(task, None, "val", patch_size=zoo.manifest.patch_size, seed=0, num_patches=2)
    val = [val[i] for i in range(len(val))]
    teacher, swaps = single_swaps(zoo.supernet(), val, task, ["T", "E", "I"])
    positions = [f"{s.name}.{i}" for s in stage_layout(zoo.config) for i in range(s.depth)]
    assert list(swaps) == positions and all(set(row) == {"E", "I"} for row in swaps.values())
    assert teacher == pytest.approx(evaluate(zoo.build(ALL_T), val, task).psnr, abs=1e-4)
    one = Arch.parse(ALL_T).block_kinds(zoo.config)
    one["lat"][1] = "E"
    assert swaps["lat.1"]["E"] == pytest.approx(evaluate(zoo.build(Arch.from_block_kinds(one)), val, task).psnr
                                                - teacher, abs=2e-4)


def test_search_evaluates_the_zoo_front_first_and_says_so(micro_zoo, tmp_path):
    from ens.search.zoo_front import front_seeds
    from ens.zoo.store import Zoo
    from profilers.lut import LatencyTable

    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo, root / "deblur-tiny")
    cfg = Zoo.load(root / "deblur-tiny").config
    costs = {s.name: {"T": 4.0, "M": 3.0, "E": 1.0} for s in stage_layout(cfg)}
    table = LatencyTable.load(_save_table(cfg, ["T", "M", "E"], costs))

    lines: list[str] = []
    opts = SearchOptions(task="deblur", profiler="lut:ort-cpu", trials=6, workers=0,
                         storage=str(tmp_path / "s.db"), zoo_root=str(root), shape="1x3x32x32", sampler="random",
                         kinds="T,M,E")
    study, _ = run_search(opts, log=lines.append)
    recorded = study.user_attrs["single_swaps"]
    assert set(recorded["delta_psnr"]["enc1.0"]) == {"M", "E"}
    expected, line = front_seeds(recorded["delta_psnr"], table, cfg, ["T", "M", "E"], "stage")
    assert expected and line in lines and any(x.startswith("zoo front: scoring the 22 single swaps") for x in lines)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.user_attrs["arch"] for t in done][:3] == [ALL_T, str(Arch.uniform("M")), str(Arch.uniform("E"))]
    seeded = [t for t in done if "zoo_front" in t.user_attrs]
    assert [t.user_attrs["arch"] for t in seeded] == [str(s.arch) for s in expected[:3]]
    assert [t.number for t in seeded] == list(range(3, 3 + len(seeded)))  # right after the references
    for t, s in zip(seeded, expected, strict=False):
        assert t.user_attrs["zoo_front"]["predicted_loss_db"] == s.loss_db
        assert t.user_attrs["latency"] == pytest.approx(s.latency_ms)  # the table the front was priced with
        assert t.user_attrs["psnr"] == pytest.approx(recorded["teacher_psnr"] - s.loss_db, abs=1.0)

    from ens.report import load_study, write_report

    write_report(load_study(tmp_path / "s.db"), tmp_path / "report")
    table = (tmp_path / "report" / "single_swaps.md").read_text()
    assert "| enc1.0  |" in table and f"{recorded['delta_psnr']['ref.0']['E']:+.3f}" in table
    assert "Single swaps" in (tmp_path / "report" / "pareto.html").read_text()

    lines.clear()
    run_search(SearchOptions(**{**opts.__dict__, "profiler": "proxy", "study_name": "p", "trials": 1}),
               log=lines.append)
    assert any("zoo front: skipped (profiler proxy has no latency table" in line for line in lines)
    lines.clear()
    study, _ = run_search(SearchOptions(**{**opts.__dict__, "zoo_front": False, "study_name": "off",
                                           "trials": 1}), log=lines.append)
    assert not any("zoo front" in line for line in lines) and "single_swaps" not in study.user_attrs
    assert not any("zoo_front" in t.user_attrs for t in study.trials)
