from __future__ import annotations

import optuna
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocks import HybridUNet, block_kinds
from profilers.onnx_export import export_onnx, max_abs_error, op_types
from search_spaces import Arch, ArchError, arch_from_params, arch_to_params, param_names, sample_arch


def test_canonical_string_round_trips():
    s = "enc:T,M,E|lat:M|dec:E,M,T|ref:E"
    a = Arch.parse(s)
    assert str(a) == s
    assert Arch.parse(str(a)) == a
    assert a.hash == Arch.parse(s).hash and len(a.hash) == 16
    assert a.hash != Arch.parse("enc:T,M,E|lat:M|dec:E,M,T|ref:T").hash


def test_uniform_levels_are_collapsed():
    assert str(Arch.parse("enc:TT,M,EE|lat:MM|dec:E,M,T|ref:E")) == "enc:T,M,E|lat:M|dec:E,M,T|ref:E"
    assert str(Arch.parse(" enc:TM,M,E | lat:M | dec:E,M,T | ref:E ")) == "enc:TM,M,E|lat:M|dec:E,M,T|ref:E"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "enc:T,M|lat:M|dec:E,M,T|ref:E",
        "enc:T,M,E|lat:M|dec:E,M,T",
        "enc:T,M,E|lat:M|dec:E,M,t|ref:E",
        "enc:T,M,E|lat:|dec:E,M,T|ref:E",
        "enc:T,M,E|dec:E,M,T|lat:M|ref:E",
        "encoder:T,M,E|lat:M|dec:E,M,T|ref:E",
        "enc:T,M,E|lat:M|dec:E,M,T|ref:E|x:T",
    ],
)
def test_malformed_strings_raise_arch_error(bad):
    with pytest.raises(ArchError):
        Arch.parse(bad)


def test_unknown_kind_and_wrong_depth(micro_cfg):
    with pytest.raises(ArchError, match="unknown block kind"):
        Arch.parse("enc:T,X,E|lat:M|dec:E,M,T|ref:E", known_kinds="TME")
    with pytest.raises(ArchError, match="enc1 has 1 blocks"):
        Arch.parse("enc:TM,M,E|lat:M|dec:E,M,T|ref:E").block_kinds(micro_cfg)


def test_block_kinds_and_counts(micro_cfg):
    a = Arch.parse("enc:T,ME,E|lat:T|dec:E,M,T|ref:E")
    bk = a.block_kinds(micro_cfg)
    assert bk["enc2"] == ["M", "E"] and bk["lat"] == ["T", "T"]
    assert a.count(micro_cfg, "T") == 4
    assert Arch.from_block_kinds(bk) == a


@pytest.mark.parametrize("granularity", ["stage", "block"])
def test_sampling_from_a_trial_round_trips(micro_cfg, granularity):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(8):
        trial = study.ask()
        arch = sample_arch(trial, micro_cfg, granularity=granularity)
        assert arch_from_params(trial.params, micro_cfg, granularity) == arch
        assert arch_to_params(arch, micro_cfg, granularity) == trial.params
        seen.add(arch)
        study.tell(trial, 0.0)
    assert len(seen) > 1
    assert len(param_names(micro_cfg, granularity)) == (8 if granularity == "stage" else 11)
    with pytest.raises(ArchError):
        param_names(micro_cfg, "pixel")


_granularity = st.sampled_from(["stage", "block"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), granularity=_granularity, h=st.integers(9, 30), w=st.integers(9, 30))
def test_every_sampled_arch_builds_runs_and_exports(micro_cfg, tmp_path, data, granularity, h, w):
    names = param_names(micro_cfg, granularity)
    kinds = sorted(block_kinds())
    params = {n: data.draw(st.sampled_from(kinds), label=n) for n in names}
    arch = sample_arch(optuna.trial.FixedTrial(params), micro_cfg, kinds, granularity=granularity)
    assert Arch.parse(str(arch)) == arch
    torch.manual_seed(0)
    model = HybridUNet(micro_cfg, arch.block_kinds(micro_cfg)).eval()
    # randomise the zero-initialised residual scales so that every block contributes
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.5)
    x = torch.rand(1, 3, h, w)
    assert model(x).shape == x.shape
    path = export_onnx(model, x.shape, tmp_path / f"{arch.hash}_{h}x{w}.onnx")
    assert not {"Loop", "Scan"} & op_types(path)
    assert max_abs_error(model, path, x) < 1e-4
