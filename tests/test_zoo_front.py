"""The additive front (exact against brute force) and ``ens search --zoo-front``'s enqueued architectures."""

from __future__ import annotations

import itertools
import random
import shutil

import pytest
from optuna.trial import TrialState

from blocks import UNetConfig
from blocks.unet import stage_layout
from ens.errors import EnsError
from ens.report import ALL_T
from ens.search.driver import SearchOptions, run_search
from ens.search.zoo_front import front_seeds, predicted_front, refine_front, slot_options
from search_spaces.additive import FrontPoint, additive_front, fastest_within
from search_spaces.arch import Arch
from search_spaces.sampling import arch_from_params, param_names

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


def test_slot_options_and_front_around_another_base():
    """Around a base other than all-T: its kind is the free option, T is a swap like any other, and without
    clipping a gain offsets another slot's loss."""
    base = Arch.uniform("E").block_kinds(CFG)
    swap = _swaps(CFG, {"T": 0.1, "I": -0.2})  # T gains 0.1 dB per block, I loses 0.2
    costs = {s.name: {"T": 5.0, "E": 2.0, "I": 0.0} for s in stage_layout(CFG)}
    clipped = dict(zip(param_names(CFG), slot_options(swap, costs, CFG, ["T", "E", "I"], "stage", base), strict=True))
    assert clipped["enc2"] == {"E": (0.0, 4.0), "T": (0.0, 10.0), "I": (pytest.approx(0.4), 0.0)}
    raw = dict(zip(param_names(CFG), slot_options(swap, costs, CFG, ["T", "E", "I"], "stage", base, clip=False),
                   strict=True))
    assert raw["enc2"]["T"] == (pytest.approx(-0.2), 10.0)
    # from a base 0.5 dB down, a 0.3 dB budget is already spent: only gains make room
    assert predicted_front(swap, 1.0, costs, CFG, ["T", "E", "I"], budgets=(0.3,), base=base, base_loss=0.5) == []
    (p,) = predicted_front(swap, 1.0, costs, CFG, ["T", "E", "I"], budgets=(0.3,), base=base, base_loss=0.5,
                           clip=False)
    # two T blocks win back 0.2 dB; an I block (0.2 dB more) would need two more T blocks than it saves
    assert p.loss_db == pytest.approx(0.3) and p.arch.count(CFG, "T") == 2 and p.arch.kinds_used() == {"T", "E"}
    with pytest.raises(ValueError, match="mixes kinds"):
        mixed = {k: list(v) for k, v in base.items()}
        mixed["lat"] = ["E", "T"]
        slot_options(swap, costs, CFG, ["T", "E"], "stage", mixed)


class _Table:
    skeleton_ms = 3.0
    costs = {s.name: {"T": 5.0, "E": 2.0, "I": 0.0} for s in stage_layout(CFG)}

    def predict(self, bk):
        return self.skeleton_ms + sum(self.costs[s][k] for s, ks in bk.items() for k in ks)


def _compounding(bk):
    """E loses 0.04 dB per block; skipped blocks compound (0.03 dB x their count squared): not additive."""
    ks = [k for v in bk.values() for k in v]
    return 30.0 - 0.04 * ks.count("E") - 0.03 * ks.count("I") ** 2


def test_refine_front_finds_what_the_teacher_swaps_alone_miss():
    table, calls = _Table(), []

    def score(bk):
        calls.append(1)
        return _compounding(bk)

    names = param_names(CFG)
    brute = min(table.predict(a.block_kinds(CFG)) for a in
                (arch_from_params(dict(zip(names, c, strict=True)), CFG) for c in itertools.product("TEI", repeat=8))
                if 30.0 - _compounding(a.block_kinds(CFG)) <= 0.3 + 1e-9)

    def fastest(found):
        return min(s.latency_ms for s in found.seeds if s.loss_db <= 0.3 + 1e-9)

    once = refine_front(score, table, CFG, ["T", "E", "I"], rounds=1)
    lines = []
    calls.clear()
    found = refine_front(score, table, CFG, ["T", "E", "I"], rounds=8, log=lines.append)
    assert fastest(once) > brute and fastest(found) == pytest.approx(brute)  # 43 ms, then the optimum (35 ms)
    assert 1 < len(found.rounds) < 8 and len(lines) == len(found.rounds)  # stopped when the incumbent held
    assert found.rounds[0].base == ALL_T and found.rounds[0].base_loss_db == 0.0
    assert all(r.base_loss_db <= 0.3 + 1e-9 for r in found.rounds)
    assert [r.base_latency_ms for r in found.rounds] == sorted((r.base_latency_ms for r in found.rounds),
                                                               reverse=True)
    assert len(calls) == sum(r.scored for r in found.rounds) + 1  # each network once (+ the teacher)
    assert found.swaps == {f"{s.name}.{i}": {"E": -0.04, "I": -0.03} for s in stage_layout(CFG)
                           for i in range(s.depth)}
    for s in found.seeds:  # measured, on the front, mixed
        assert s.loss_db == pytest.approx(30.0 - _compounding(s.arch.block_kinds(CFG)))
        assert s.latency_ms == pytest.approx(table.predict(s.arch.block_kinds(CFG)))
        assert len(s.arch.kinds_used()) > 1 and s.loss_db <= 2.0
    pairs = [(s.loss_db, s.latency_ms) for s in found.seeds]
    assert pairs == sorted(pairs) and len(pairs) <= 7 + 2


def test_front_seeds_are_the_fastest_within_each_budget():
    from ens.search.zoo_front import Seed

    def seed(text, loss, ms):
        return Seed(Arch.parse(text), loss, ms, 0, None)

    pts = [seed("enc:T,E,T|lat:T|dec:T,T,T|ref:T", 0.1, 50.0), seed("enc:T,E,E|lat:T|dec:T,T,T|ref:T", 0.2, 60.0),
           seed("enc:E,E,E|lat:E|dec:E,E,E|ref:E", 0.3, 20.0), seed("enc:I,E,E|lat:T|dec:T,T,T|ref:T", 0.25, 10.0),
           seed("enc:I,I,E|lat:T|dec:T,T,T|ref:T", 3.0, 5.0), seed("enc:T,T,E|lat:T|dec:T,T,T|ref:T", 0.3, 70.0)]
    picked = [str(s.arch) for s in front_seeds(pts, (0.15, 0.3, 2.0), 0.3, near=2)]
    # 0.15: T,E,T; 0.3 (the target): I,E,E then T,E,T (uniform E is a reference); 2.0: I,E,E again
    assert picked == ["enc:T,E,T|lat:T|dec:T,T,T|ref:T", "enc:I,E,E|lat:T|dec:T,T,T|ref:T"]
    three = [str(s.arch) for s in front_seeds(pts, (0.15, 0.3, 2.0), 0.3, near=3)]
    assert three == ["enc:T,E,T|lat:T|dec:T,T,T|ref:T", "enc:T,E,E|lat:T|dec:T,T,T|ref:T",
                     "enc:I,E,E|lat:T|dec:T,T,T|ref:T"]  # by loss; T,T,E (70 ms) is the fourth fastest
    assert front_seeds(pts, (0.05,), 0.3) == []


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
    from ens.search.zoo_front import HeldOutScorer, single_swaps
    from ens.tasks import get_task
    from ens.zoo.store import Zoo

    zoo, task = Zoo.load(micro_zoo), get_task("deblur")
    val = load_pairs(task, None, "val", patch_size=zoo.manifest.patch_size, seed=0, num_patches=2)
    val = [val[i] for i in range(len(val))]
    teacher, swaps = single_swaps(HeldOutScorer(zoo.supernet(), val, task), zoo.config, ["T", "E", "I"])
    positions = [f"{s.name}.{i}" for s in stage_layout(zoo.config) for i in range(s.depth)]
    assert list(swaps) == positions and all(set(row) == {"E", "I"} for row in swaps.values())
    assert teacher == pytest.approx(evaluate(zoo.build(ALL_T), val, task).psnr, abs=1e-4)
    one = Arch.parse(ALL_T).block_kinds(zoo.config)
    one["lat"][1] = "E"
    assert swaps["lat.1"]["E"] == pytest.approx(evaluate(zoo.build(Arch.from_block_kinds(one)), val, task).psnr
                                                - teacher, abs=2e-4)


def test_search_evaluates_the_zoo_front_first_and_says_so(micro_zoo, tmp_path):
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
                         kinds="T,M,E", zoo_front_rounds=3, zoo_front_target=1.0)
    study, _ = run_search(opts, log=lines.append)
    recorded = study.user_attrs["single_swaps"]
    assert set(recorded["delta_psnr"]["enc1.0"]) == {"M", "E"}
    rounds = study.user_attrs["zoo_front_rounds"]
    assert 1 <= len(rounds) <= 3 and rounds[0]["base"] == ALL_T and rounds[0]["scored"] >= 22
    assert any(x.startswith("zoo front: scoring the 22 single swaps") for x in lines)
    assert sum(x.startswith("zoo front round ") for x in lines) == len(rounds)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.user_attrs["arch"] for t in done][:3] == [ALL_T, str(Arch.uniform("M")), str(Arch.uniform("E"))]
    seeded = [t for t in study.trials if "zoo_front" in t.user_attrs]
    assert seeded and [t.number for t in seeded] == list(range(3, 3 + len(seeded)))  # right after the references
    assert any(x.startswith(f"zoo front: {len(seeded)} architectures, the fastest measured") for x in lines)
    for t in seeded:
        if t.state != TrialState.COMPLETE:
            continue
        front = t.user_attrs["zoo_front"]
        # the loss the refinement measured is the trial's own, and its latency is the table's
        assert t.user_attrs["psnr"] == pytest.approx(recorded["teacher_psnr"] - front["loss_db"], abs=2e-4)
        assert t.user_attrs["latency"] == pytest.approx(front["predicted_latency_ms"])
        assert front["predicted_latency_ms"] == pytest.approx(table.predict(Arch.parse(t.user_attrs["arch"])
                                                                            .block_kinds(cfg)), abs=0.01)
    fronts = [(t.user_attrs["zoo_front"]["loss_db"], t.user_attrs["zoo_front"]["predicted_latency_ms"])
              for t in seeded]
    assert fronts == sorted(fronts) and len(fronts) <= 7 + 2
    near = [t for t in seeded if t.user_attrs["zoo_front"]["loss_db"] <= 1.0]
    if near:  # the summary names the fastest within the target
        fastest = min(near, key=lambda t: t.user_attrs["zoo_front"]["predicted_latency_ms"])
        assert any(x.startswith("zoo front: ") and f"within 1 dB: {fastest.user_attrs['arch']}," in x for x in lines)

    from ens.report import load_study, write_report

    write_report(load_study(tmp_path / "s.db"), tmp_path / "report")
    table = (tmp_path / "report" / "single_swaps.md").read_text()
    assert "| enc1.0  |" in table and f"{recorded['delta_psnr']['ref.0']['E']:+.3f}" in table
    assert "Single swaps" in (tmp_path / "report" / "pareto.html").read_text()
    assert "Rounds of the zoo front" in table and "| " + ALL_T.replace("|", "\\|") + " " in table
    assert "Rounds of the zoo front" in (tmp_path / "report" / "pareto.html").read_text()

    lines.clear()
    run_search(SearchOptions(**{**opts.__dict__, "profiler": "proxy", "study_name": "p", "trials": 1}),
               log=lines.append)
    assert any("zoo front: skipped (profiler proxy has no latency table" in line for line in lines)
    lines.clear()
    study, _ = run_search(SearchOptions(**{**opts.__dict__, "zoo_front": False, "study_name": "off",
                                           "trials": 1}), log=lines.append)
    assert not any("zoo front" in line for line in lines) and "single_swaps" not in study.user_attrs
    assert not any("zoo_front" in t.user_attrs for t in study.trials)
    for bad, msg in (({"zoo_front_rounds": 0}, "--zoo-front-rounds must be at least 1"),
                     ({"zoo_front_target": 0.0}, "--zoo-front-target must be a positive")):
        with pytest.raises(EnsError, match=msg):
            run_search(SearchOptions(**{**opts.__dict__, **bad, "study_name": "bad"}), log=lines.append)
