from __future__ import annotations

import json

import pytest
import torch

from ens.errors import EnsError
from ens.zoo import Zoo, ZooError
from ens.zoo.build import build_zoo
from ens.zoo.manifest import MANIFEST, WEIGHTS
from search_spaces import Arch


def test_zoo_is_complete_and_loads(micro_zoo):
    zoo = Zoo.load(micro_zoo)
    m = zoo.manifest
    assert m.task == "deblur" and m.kinds == ["T", "M", "E", "S", "L", "I", "F", "G", "D"]
    assert len(m.slots) == 11 and m.versions["torch"].startswith("2.")
    assert set(m.distill["relative_error"]) == {f"{s['stage']}.{s['index']}" for s in m.slots}
    stage_s = [m.teacher["seconds"], m.distill["seconds"], m.calibration["seconds"],
               m.calibration["quality_report_seconds"]]
    assert all(s >= 0 for s in stage_s) and sum(stage_s) <= m.wall_time_s + 0.5
    q = json.loads((micro_zoo / "quality.json").read_text())
    assert set(q["uniform"]) == {"M", "E", "S", "L", "I", "F", "G", "D"} and len(q["swap"]) == 11
    assert q["teacher"]["psnr"] == m.teacher["val"]["psnr"]
    assert (micro_zoo / "quality.md").read_text().startswith("# Zoo quality")
    assert not list(micro_zoo.parent.glob(".*work")), "the work folder is removed after a build"


def test_any_arch_builds_from_the_zoo_without_training(micro_zoo):
    zoo = Zoo.load(micro_zoo)
    a = Arch.parse("enc:T,ME,E|lat:MT|dec:E,M,T|ref:E")
    net = zoo.build(a)
    sup = zoo.supernet()
    sup.set_kinds(a.block_kinds(zoo.config))
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(net(x), sup.eval()(x))
    teacher = zoo.build(Arch.uniform("T"))
    with torch.no_grad():
        assert not torch.allclose(teacher(x), net(x))


def test_zoo_errors(micro_zoo, tmp_path):
    with pytest.raises(ZooError, match="manifest.json is missing"):
        Zoo.load(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MANIFEST).write_text("{not json")
    with pytest.raises(ZooError, match="not valid JSON"):
        Zoo.load(bad)
    raw = json.loads((micro_zoo / MANIFEST).read_text())
    for change, msg in [({"format": 99}, "format"), ({"slots": raw["slots"][:-1]}, "slots do not match"),
                        ({"kinds": ["T", "Q"]}, "does not have")]:
        d = tmp_path / f"z{len(msg)}"
        d.mkdir()
        (d / MANIFEST).write_text(json.dumps({**raw, **change}))
        (d / WEIGHTS).write_bytes((micro_zoo / WEIGHTS).read_bytes())
        with pytest.raises(ZooError, match=msg):
            Zoo.load(d)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / MANIFEST).write_text((micro_zoo / MANIFEST).read_text())
    (corrupt / WEIGHTS).write_bytes(b"\0" * 100)
    with pytest.raises(ZooError, match="checksum"):
        Zoo.load(corrupt)


def test_interrupted_build_resumes_and_never_leaves_half_a_zoo(tmp_path, micro_cfg, micro_recipe, monkeypatch):
    import ens.zoo.build as zb

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(zb, "calibrate_in_context", boom)
    with pytest.raises(KeyboardInterrupt):
        build_zoo("deblur", "tiny", out_root=tmp_path, config=micro_cfg, recipe=micro_recipe, show_progress=False,
                  log=lambda s: None)
    assert not (tmp_path / "deblur-tiny").exists()
    work = tmp_path / ".deblur-tiny.work"
    assert (work / "teacher.ckpt.safetensors").is_file() and (work / "distill.ckpt.safetensors").is_file()
    monkeypatch.undo()
    calls = []
    orig = zb.train_teacher

    def spy(net, train_set, recipe, seed, ckpt, show, **kw):
        calls.append(ckpt.is_file())
        return orig(net, train_set, recipe, seed, ckpt, show, **kw)

    monkeypatch.setattr(zb, "train_teacher", spy)
    out = build_zoo("deblur", "tiny", out_root=tmp_path, config=micro_cfg, recipe=micro_recipe, show_progress=False,
                    log=lambda s: None)
    assert calls == [True], "the teacher resumed from its checkpoint"
    assert Zoo.load(out).manifest.task == "deblur"
    with pytest.raises(EnsError, match="other settings"):
        (tmp_path / ".deblur-tiny.work").mkdir()
        (tmp_path / ".deblur-tiny.work" / "spec.json").write_text(json.dumps({"seed": 99}))
        build_zoo("deblur", "tiny", out_root=tmp_path, config=micro_cfg, recipe=micro_recipe, force=True,
                  show_progress=False, log=lambda s: None)


def test_checkpoint_round_trip_is_exact(tmp_path):
    from ens.training import load_checkpoint, save_checkpoint

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.rand(1, 3, 8, 8)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.safetensors", {"n": net}, opt, 7)
    net2 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3)
    meta = load_checkpoint(tmp_path / "c.safetensors", {"n": net2}, opt2)
    assert meta["step"] == 7
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    torch.testing.assert_close(s1[0]["exp_avg"], s2[0]["exp_avg"])


def test_teacher_starts_at_the_identity(micro_cfg):
    from blocks.unet import HybridUNet
    from ens.zoo.teacher import start_at_identity

    torch.manual_seed(0)
    net = HybridUNet(micro_cfg).eval()
    x = torch.rand(1, 3, 20, 28)
    assert (net(x) - x).abs().max() > 1e-3
    start_at_identity(net)
    assert torch.equal(net(x), x)


def test_calibration_clean_weight_moves_the_target(micro_cfg, tmp_path):
    """w = 0 pulls hybrids to the teacher's output, w = 1 to the clean image: each lowers its own error more."""
    from blocks import HybridUNet
    from blocks.unet import uniform_kinds
    from ens.zoo.distill import DistillRecipe, calibrate_in_context

    g = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(3, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)) for _ in range(4)]
    deg = torch.stack([p[0] for p in pairs])
    clean = torch.stack([p[1] for p in pairs])
    torch.manual_seed(0)
    start = HybridUNet(micro_cfg, candidates=["T", "E"]).state_dict()

    def errors(w: float) -> tuple[float, float]:
        net = HybridUNet(micro_cfg, candidates=["T", "E"])
        net.load_state_dict(start)
        recipe = DistillRecipe(batch_size=4, calib_steps=15, calib_lr=3e-3, calib_clean_weight=w)
        calibrate_in_context(net, ["E"], pairs, recipe, 0, tmp_path / f"c{w}.ckpt", show_progress=False)
        net.eval()
        with torch.no_grad():
            net.set_kinds(uniform_kinds(micro_cfg, "T"))
            teacher = net(deg)
            net.set_kinds(uniform_kinds(micro_cfg, "E"))
            out = net(deg)
        return float((out - teacher).abs().mean()), float((out - clean).abs().mean())

    to_teacher_0, to_clean_0 = errors(0.0)
    to_teacher_1, to_clean_1 = errors(1.0)
    assert to_teacher_0 < to_teacher_1 and to_clean_1 < to_clean_0


def test_tail_is_the_rest_of_the_forward_pass(micro_cfg):
    """For every full-resolution position of a hybrid, tail(block output) + input is the network's output."""
    from blocks.unet import FULL_RES_STAGES, HybridUNet
    from ens.zoo.distill import capture_block_io

    torch.manual_seed(0)
    net = HybridUNet(micro_cfg, kinds={"enc1": ["E"], "enc2": ["T", "M"], "enc3": ["T"], "lat": ["M", "E"],
                                       "dec3": ["T"], "dec2": ["E", "T"], "dec1": ["M"], "ref": ["T"]}).eval()
    torch.nn.init.normal_(net.output.weight, std=0.1)  # a non-zero residual
    x = torch.rand(2, 3, 16, 24)
    seen = {}
    hook = net.up2_1.register_forward_hook(lambda _m, _i, out: seen.setdefault("up", out))
    with torch.no_grad(), capture_block_io(net) as rec:
        want = net(x)
    hook.remove()
    full_res = [(s, i) for s, i, _ in net.slot_blocks() if s in FULL_RES_STAGES]
    assert len(full_res) == 3
    with torch.no_grad():
        for stage, i in full_res:
            torch.testing.assert_close(net.tail(stage, i, rec[(stage, i)][1], seen["up"]) + x, want)
    with pytest.raises(ValueError, match="full-resolution"):
        net.tail("lat", 0, rec[("lat", 0)][1])
    with pytest.raises(ValueError, match="needs up"):
        net.tail("enc1", 0, rec[("enc1", 0)][1])


def test_downstream_loss_is_the_image_error_of_a_single_swap(micro_cfg):
    """At dec1 and ref the downstream term is exactly mean|output with only that block swapped - teacher output|."""
    from blocks.unet import HybridUNet, uniform_kinds
    from ens.zoo.distill import downstream_loss, teacher_pass

    torch.manual_seed(0)
    net = HybridUNet(micro_cfg, candidates=["T", "M", "E"]).eval()
    torch.nn.init.normal_(net.output.weight, std=0.1)
    for p in net.parameters():  # surrogates far from their teacher block, so the swap changes the output
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        tp = teacher_pass(net, x)
        t_out = net(x)
        for stage in ("dec1", "ref"):
            xin, _ = tp.blocks[(stage, 0)]
            outs = [net.stages[stage][0].choices[k](xin) for k in ("M", "E")]
            got = downstream_loss(net, stage, 0, outs, tp, n=2)
            want = 0.0
            for k in ("M", "E"):
                kinds = uniform_kinds(micro_cfg, "T")
                kinds[stage][0] = k
                net.set_kinds(kinds)
                want += float((net(x[:2]) - t_out[:2]).abs().mean())
            net.set_kinds(uniform_kinds(micro_cfg, "T"))
            assert want > 1e-3
            assert abs(float(got) - want) < 1e-5 * max(1.0, want)


def test_downstream_term_lowers_the_swap_error_at_full_resolution(micro_cfg):
    """Same data, seed and steps: distilling with the downstream term gives full-resolution surrogates
    whose single swaps change the output image less than the feature loss alone does."""
    from blocks.unet import HybridUNet, uniform_kinds
    from ens.zoo.distill import DistillRecipe, distill_surrogates

    g = torch.Generator().manual_seed(1)
    clean = torch.rand(8, 3, 16, 16, generator=g)
    pairs = [(c, c) for c in clean]
    torch.manual_seed(0)
    base = HybridUNet(micro_cfg, candidates=["T", "E"])
    torch.nn.init.normal_(base.output.weight, std=0.1)
    start = base.state_dict()

    def swap_errors(w: float, tmp: str) -> float:
        import pathlib
        import tempfile

        net = HybridUNet(micro_cfg, candidates=["T", "E"])
        net.load_state_dict(start)
        recipe = DistillRecipe(steps=40, batch_size=4, lr=3e-3, downstream_weight=w, downstream_batch=0)
        with tempfile.TemporaryDirectory() as d:
            distill_surrogates(net, ["E"], pairs, recipe, 0, pathlib.Path(d) / f"{tmp}.ckpt", show_progress=False)
        net.eval()
        total = 0.0
        with torch.no_grad():
            net.set_kinds(uniform_kinds(micro_cfg, "T"))
            t_out = net(clean)
            for stage in ("dec1", "ref"):
                kinds = uniform_kinds(micro_cfg, "T")
                kinds[stage][0] = "E"
                net.set_kinds(kinds)
                total += float((net(clean) - t_out).abs().mean())
        return total

    with_term, without = swap_errors(20.0, "with"), swap_errors(0.0, "without")
    assert with_term < 0.6 * without


def test_a_zoo_extended_with_new_kinds_keeps_its_teacher_and_old_surrogates(tmp_path, micro_cfg, micro_recipe):
    """``--from-zoo``: only the kinds the base lacks are distilled; T, M and E weights are the base's."""
    from dataclasses import replace

    import torch

    from ens.zoo.build import build_zoo
    from ens.zoo.manifest import ZooManifest
    from ens.zoo.store import Zoo

    quick = replace(micro_recipe, rank_archs=0, quality_mixed=1)
    kw = dict(config=micro_cfg, recipe=quick, show_progress=False, log=lambda m: None)
    base = build_zoo("denoise", "tiny", out_root=tmp_path / "a", kinds=("M", "E"), **kw)
    logs: list[str] = []
    ext = build_zoo("denoise", "tiny", out_root=tmp_path / "b", kinds=("M", "S", "I"), base=base,
                    **{**kw, "log": logs.append})
    m = ZooManifest.read(ext)
    assert m.kinds == ["T", "M", "E", "S", "I"] and m.distill["kinds"] == ["S", "I"]
    assert m.build["extended"][0]["from"] == ZooManifest.read(base).zoo_id
    assert "--from-zoo" in m.build["extended"][0]["command"] and "--kinds M,E,S,I" in m.build["extended"][0]["command"]
    old, new = Zoo.load(base).state, Zoo.load(ext).state
    assert all(torch.equal(old[k], new[k]) for k in old)  # nothing of the base was retrained
    assert any(".choices.S." in k for k in new) and not any(".choices.I." in k for k in new)  # the skip has no weights
    assert set(m.distill["relative_error"]["enc1.0"]) == {"M", "E", "S", "I"}
    assert abs(m.distill["relative_error"]["enc1.0"]["I"] - 1.0) < 1e-6  # skipping is no better than skipping
    assert any("teacher and M, E from zoo" in x for x in logs)


def test_refine_distils_a_base_kind_further_from_its_weights_and_leaves_the_rest(tmp_path, micro_cfg, micro_recipe):
    """``--from-zoo Z --refine E``: E's surrogates train on from Z's weights; T and M stay Z's, bit for bit."""
    from dataclasses import replace

    import torch

    from ens.errors import EnsError
    from ens.zoo.build import build_zoo
    from ens.zoo.manifest import ZooManifest
    from ens.zoo.store import Zoo

    quick = replace(micro_recipe, rank_archs=0, quality_mixed=1)
    kw = dict(config=micro_cfg, recipe=quick, show_progress=False, log=lambda m: None)
    base = build_zoo("denoise", "tiny", out_root=tmp_path / "a", kinds=("M", "E"), **kw)
    with pytest.raises(EnsError, match="--from-zoo"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", kinds=("M", "E"), refine=("E",), **kw)
    with pytest.raises(EnsError, match="not a surrogate kind of zoo"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", base=base, kinds=("M", "E"), refine=("S",), **kw)
    ref = build_zoo("denoise", "tiny", out_root=tmp_path / "b", base=base, kinds=("M", "E"), refine=("E",), **kw)
    m = ZooManifest.read(ref)
    assert m.kinds == ["T", "M", "E"] and m.distill["kinds"] == ["E"] and m.distill["refined"] == ["E"]
    assert "--refine E" in m.build["extended"][0]["command"]
    old, new = Zoo.load(base).state, Zoo.load(ref).state
    assert old.keys() == new.keys()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(".choices.E." in k for k in changed)
    # it started from the base's weights, not from scratch: closer to them than to a fresh initialisation
    k = next(k for k in sorted(changed) if k.endswith("weight") and new[k].dim() == 4)
    assert (new[k] - old[k]).abs().mean() < old[k].abs().mean()


def test_distill_slots_refine_only_those_positions_and_are_recorded_and_checked(tmp_path, micro_cfg, micro_recipe):
    """``--refine E --distill-slots ref --distill-lr R``: only the ref slot's E moves; every other weight stays the
    base zoo's, bit for bit; the manifest and the rebuild command name the slots and the rate."""
    from dataclasses import replace

    import torch

    from ens.errors import EnsError
    from ens.zoo.build import build_zoo
    from ens.zoo.distill import in_slots
    from ens.zoo.manifest import ZooManifest
    from ens.zoo.store import Zoo

    assert in_slots("ref", 0, ()) and in_slots("ref", 0, ("ref",)) and in_slots("dec1", 0, ("dec1.0",))
    assert not in_slots("dec1", 1, ("dec1.0",)) and not in_slots("enc1", 0, ("ref",))
    quick = replace(micro_recipe, rank_archs=0, quality_mixed=1)
    kw = dict(config=micro_cfg, recipe=quick, show_progress=False, log=lambda m: None)
    base = build_zoo("denoise", "tiny", out_root=tmp_path / "a", kinds=("E",), **kw)
    with pytest.raises(EnsError, match="needs --from-zoo and --refine"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", kinds=("E",), distill_slots=("ref",), **kw)
    with pytest.raises(EnsError, match="needs --from-zoo and --refine"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", base=base, kinds=("E",), refine=("T",),
                  distill_slots=("ref",), **kw)
    with pytest.raises(EnsError, match="ref.7 is not a block position"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", base=base, kinds=("E",), refine=("E",),
                  distill_slots=("ref.7",), **kw)
    with pytest.raises(EnsError, match="--distill-lr must be > 0"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", base=base, kinds=("E",), refine=("E",), distill_lr=0.0,
                  **kw)
    out = build_zoo("denoise", "tiny", out_root=tmp_path / "b", base=base, kinds=("E",), refine=("E",),
                    distill_slots=("ref",), distill_lr=1e-3, **kw)
    m = ZooManifest.read(out)
    assert m.distill["slots"] == ["ref"] and m.distill["lr"] == 1e-3
    assert "--distill-lr 0.001 --distill-slots ref" in m.build["extended"][0]["command"]
    old, new = Zoo.load(base).state, Zoo.load(out).state
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("stages.ref.") and ".choices.E." in k for k in changed)


def test_refine_t_trains_the_base_teacher_further_and_redistils_every_kind(tmp_path, micro_cfg, micro_recipe):
    """``--from-zoo Z --refine T``: the teacher goes on from Z's weights (not from the identity start), its curve
    and step count go on from Z's, and every surrogate kind follows it from Z's weights."""
    from dataclasses import replace

    import torch

    from ens.zoo.build import build_zoo
    from ens.zoo.manifest import ZooManifest
    from ens.zoo.store import Zoo
    from ens.zoo.teacher import curve_steps

    quick = replace(micro_recipe, rank_archs=0, quality_mixed=1,
                    teacher=replace(micro_recipe.teacher, curve_at=(2, 4, 6, 8)))
    kw = dict(config=micro_cfg, recipe=quick, show_progress=False, log=lambda m: None)
    base = build_zoo("denoise", "tiny", out_root=tmp_path / "a", kinds=("M", "E"), **kw)
    logs: list[str] = []
    ref = build_zoo("denoise", "tiny", out_root=tmp_path / "b", base=base, kinds=("M", "E"), refine=("T",),
                    **{**kw, "log": logs.append})
    mb, m = ZooManifest.read(base), ZooManifest.read(ref)
    assert mb.teacher["steps"] == 4 and m.teacher["steps"] == 8
    assert m.teacher["continued"] == [{"from": mb.zoo_id, "from_steps": 4, "steps": 4, "lr": quick.teacher.lr,
                                       "warmup": quick.teacher.warmup}]
    assert [p["step"] for p in mb.teacher["curve"]] == [2, 4]
    assert [p["step"] for p in m.teacher["curve"]] == [2, 4, 6, 8]  # counted on from the base's 4 steps
    assert m.teacher["curve"][:2] == mb.teacher["curve"]
    assert m.distill["kinds"] == ["M", "E"] and m.distill["refined"] == ["T", "M", "E"]
    assert "--refine T" in m.build["extended"][0]["command"]
    assert any("on from the 4 of zoo" in x for x in logs)
    old, new = Zoo.load(base).state, Zoo.load(ref).state
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert any(".choices.T." in k for k in changed)
    assert any(".choices.M." in k for k in changed) and any(".choices.E." in k for k in changed)
    # the base teacher's output conv was trained away from zero; a fresh start would have zeroed it again
    out = next(k for k in old if k.startswith("output.") and k.endswith("weight"))
    assert old[out].abs().sum() > 0 and (new[out] - old[out]).abs().mean() < old[out].abs().mean()
    assert curve_steps(replace(quick.teacher, steps=4), offset=4) == [2, 4]  # the base's 6 and 8


def test_unstable_kinds_names_the_uniform_networks_whose_held_out_psnr_is_not_a_number():
    from ens.zoo.build import unstable_kinds

    report = {"uniform": {"M": {"psnr": 28.1}, "F": {"psnr": float("nan")}, "G": {"psnr": float("inf")}}}
    assert unstable_kinds(report) == ["F", "G"]
    assert unstable_kinds({"uniform": {"E": {"psnr": 30.0}}}) == [] and unstable_kinds({}) == []


def test_hybrid_block_inputs_are_the_hybrids_and_leave_the_teacher_active(micro_cfg):
    from blocks.unet import HybridUNet, uniform_kinds
    from ens.zoo.distill import hybrid_block_inputs, teacher_pass

    torch.manual_seed(0)
    net = HybridUNet(micro_cfg, candidates=["T", "E"])
    torch.nn.init.normal_(net.output.weight, std=0.1)
    x = torch.rand(2, 3, 16, 16)
    tp = teacher_pass(net, x)
    same = hybrid_block_inputs(net, x, uniform_kinds(micro_cfg, "T"))
    assert all(torch.equal(same[k], tp.blocks[k][0]) for k in tp.blocks)
    kinds = uniform_kinds(micro_cfg, "T")
    kinds["enc1"][0] = "E"
    mixed = hybrid_block_inputs(net, x, kinds)
    assert torch.equal(mixed[("enc1", 0)], tp.blocks[("enc1", 0)][0])  # upstream of the swap: the teacher's
    assert not torch.allclose(mixed[("enc2", 0)], tp.blocks[("enc2", 0)][0])  # downstream: the hybrid's
    assert all(b.active == "T" for _, _, b in net.slot_blocks())


def test_in_context_term_feeds_each_surrogate_the_hybrids_input(micro_cfg):
    """With ``context_weight`` each surrogate also runs on a random hybrid's input at its slot (one call more per
    step); without it, only on the teacher's. At the last slot the two inputs differ once a block upstream is not T."""
    import pathlib
    import tempfile

    from blocks.unet import HybridUNet
    from ens.zoo.distill import DistillRecipe, distill_surrogates

    clean = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    start = HybridUNet(micro_cfg, candidates=["T", "E"]).state_dict()

    def inputs_seen(w: float) -> list[torch.Tensor]:
        net = HybridUNet(micro_cfg, candidates=["T", "E"])
        net.load_state_dict(start)
        seen: list[torch.Tensor] = []
        _, _, last = net.slot_blocks()[-1]
        last.choices["E"].register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
        recipe = DistillRecipe(steps=1, batch_size=4, lr=1e-3, downstream_weight=0.0, context_weight=w)
        with tempfile.TemporaryDirectory() as d:
            distill_surrogates(net, ["E"], [(c, c) for c in clean], recipe, 3, pathlib.Path(d) / "c.ckpt",
                               show_progress=False)
        return seen

    plain, ctx = inputs_seen(0.0), inputs_seen(1.0)
    assert len(plain) == 1 and len(ctx) >= 2
    assert torch.equal(plain[0], ctx[0])  # the teacher's input, as before
    assert not torch.allclose(ctx[0], ctx[-1])  # the hybrid's


def test_context_weight_is_recorded_and_checked(tmp_path, micro_cfg, micro_recipe):
    from dataclasses import replace

    from ens.zoo.build import zoo_command
    from ens.zoo.manifest import ZooManifest

    quick = replace(micro_recipe, rank_archs=0, quality_mixed=1)
    kw = dict(config=micro_cfg, recipe=quick, show_progress=False, log=lambda m: None)
    with pytest.raises(EnsError, match="--context-weight"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", kinds=("E",), context_weight=-1.0, **kw)
    m = ZooManifest.read(build_zoo("denoise", "tiny", out_root=tmp_path / "a", kinds=("E",), context_weight=0.5, **kw))
    assert "--context-weight 0.5" in m.build["command"] and "random hybrid" in m.distill["loss"]
    assert "--context-weight" not in zoo_command("denoise", "tiny", None, tmp_path, 0, quick)


def test_quality_report_keeps_a_mixed_figure_over_t_m_e_beside_the_all_kinds_one(micro_cfg):
    """A zoo of more kinds than T/M/E also reports hybrids of T, M and E alone: the issue's figure, comparable
    across zoos (the all-kinds mean includes the skip)."""
    from blocks.unet import HybridUNet
    from ens.tasks import get_task
    from ens.zoo.quality import quality_markdown, quality_report

    torch.manual_seed(0)
    net = HybridUNet(micro_cfg, candidates=["T", "M", "E", "I"]).eval()
    g = torch.Generator().manual_seed(2)
    val = [(torch.rand(3, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)) for _ in range(2)]
    with torch.no_grad():
        r = quality_report(net, ["M", "E", "I"], val, get_task("denoise"), seed=0, mixed=3, per_slot=False)
    assert r["mixed_core_kinds"] == ["T", "M", "E"] and len(r["mixed_core"]) == 3
    assert all(Arch.parse(m["arch"]).kinds_used() <= {"T", "M", "E"} for m in r["mixed_core"])
    assert r["mixed_core_mean_delta_psnr"] == pytest.approx(sum(m["delta_psnr"] for m in r["mixed_core"]) / 3,
                                                            abs=1e-4)
    assert "| random mixed T/M/E (mean of 3) |" in quality_markdown(r, {}, ["M", "E", "I"])
    with torch.no_grad():
        only = quality_report(net, ["M", "E"], val, get_task("denoise"), seed=0, mixed=2, per_slot=False)
    assert "mixed_core" not in only  # its mixed networks are already T/M/E


def test_distillation_patch_and_batch_are_their_own_pool_recorded_and_checked(tmp_path, micro_cfg, micro_recipe,
                                                                             monkeypatch):
    """``--distill-patch P --distill-batch B``: the surrogates train on batches of B patches of P px (a pool of
    its own, as many pixels as the teacher's), the teacher on the preset's; the manifest and command say so."""
    from dataclasses import replace

    import ens.zoo.build as zb
    from ens.zoo.build import distill_pool_size, zoo_command
    from ens.zoo.manifest import ZooManifest

    assert distill_pool_size(512, 48, 128) == 72 and distill_pool_size(16, 32, 64) == 64  # at least 64
    seen: list[tuple[int, ...]] = []
    real = zb.distill_surrogates

    def spy(supernet, kinds, train_set, recipe, *a, **k):
        seen.append((recipe.batch_size, *train_set[0][0].shape))
        return real(supernet, kinds, train_set, recipe, *a, **k)

    monkeypatch.setattr(zb, "distill_surrogates", spy)
    quick = replace(micro_recipe, rank_archs=0, quality_mixed=1)
    kw = dict(config=micro_cfg, recipe=quick, show_progress=False, log=lambda m: None)
    with pytest.raises(EnsError, match="--distill-batch"):
        build_zoo("denoise", "tiny", out_root=tmp_path / "x", kinds=("E",), distill_batch=0, **kw)
    m = ZooManifest.read(build_zoo("denoise", "tiny", out_root=tmp_path / "a", kinds=("E",), distill_patch=48,
                                   distill_batch=3, **kw))
    assert seen == [(3, 3, 48, 48)]
    assert m.patch_size == 32 and m.distill["patch_size"] == 48 and m.distill["batch_size"] == 3
    assert "--distill-patch 48 --distill-batch 3" in m.build["command"]
    plain = zoo_command("denoise", "tiny", None, tmp_path, 0, quick)
    assert "--distill-patch" not in plain and "--distill-batch" in plain  # the micro recipe's batch is not tiny's
    assert "--distill-batch" not in zoo_command("denoise", "tiny", None, tmp_path, 0, zb.RECIPES["tiny"])
