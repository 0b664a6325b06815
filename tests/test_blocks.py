from __future__ import annotations

import pytest
import torch

from blocks import HybridUNet, UNetConfig, block_kinds, build_block, get_preset, register_block, stage_layout
from blocks.efm import EFMBlock
from blocks.norm import LayerNorm2d, channel_norm
from blocks.stats import count_macs, count_params
from blocks.transformer import MDTA, TransformerBlock
from blocks.unet import uniform_kinds


@pytest.mark.parametrize("variant", ["withbias", "biasfree"])
def test_layernorm_matches_channel_layernorm(variant):
    x = torch.randn(2, 6, 5, 7)
    ln = LayerNorm2d(6, variant)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        if ln.bias is not None:
            ln.bias.uniform_(-1, 1)
    y = ln(x)
    xt = x.permute(0, 2, 3, 1)
    var = xt.var(-1, keepdim=True, unbiased=False)
    if variant == "withbias":
        ref = (xt - xt.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-5) * ln.weight.flatten() + ln.bias.flatten()
    else:
        ref = xt / torch.sqrt(var + 1e-5) * ln.weight.flatten()
    torch.testing.assert_close(y, ref.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_layernorm_exports_as_one_fused_onnx_op(tmp_path):
    """The with-bias LayerNorm is one ONNX LayerNormalization (a fused kernel in ORT, TensorRT and QNN), and
    ONNX Runtime computes what PyTorch does."""
    import onnx
    import onnxruntime as ort

    from profilers.onnx_export import export_onnx

    torch.manual_seed(0)
    ln = LayerNorm2d(6).eval()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    path = export_onnx(ln, (1, 6, 5, 7), tmp_path / "ln.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("LayerNormalization") == 1 and "ReduceMean" not in ops
    x = torch.randn(1, 6, 5, 7)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - ln(x).detach().numpy()).max() < 1e-5


def test_layernorm_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown LayerNorm"):
        LayerNorm2d(4, "batch")


def test_channel_norm_builds_each_variant_and_none_is_the_identity():
    assert isinstance(channel_norm(4, "withbias"), LayerNorm2d) and channel_norm(4, "biasfree").bias is None
    x = torch.randn(1, 4, 3, 3)
    assert channel_norm(4, "none")(x) is x
    with pytest.raises(ValueError, match="unknown norm"):
        channel_norm(4, "batch")


@pytest.mark.parametrize(("nonorm", "normed"), [("F", "E"), ("G", "L")])
def test_the_norm_free_efm_kinds_are_their_normed_kinds_without_layernorms(nonorm, normed):
    """F and G hold exactly E's and L's convolutions and scales, and no LayerNorm: from the same weights they
    compute what E and L compute once E's and L's norms are replaced by identities."""
    torch.manual_seed(0)
    a, b = build_block(nonorm, 8, 1), build_block(normed, 8, 1)
    assert not any(isinstance(m, LayerNorm2d) for m in a.modules())
    ref = {k: v for k, v in b.state_dict().items() if "norm" not in k}
    assert set(a.state_dict()) == set(ref)
    a.load_state_dict(ref)
    with torch.no_grad():
        for blk in (a, b):
            blk.beta.fill_(0.5)
            blk.gamma.fill_(0.5)
    x = torch.randn(1, 8, 6, 6)
    assert not torch.allclose(a(x), b(x), atol=1e-3)  # the norms matter on a general input
    b.norm1, b.norm2 = torch.nn.Identity(), torch.nn.Identity()
    torch.testing.assert_close(a(x), b(x))


def test_mdta_is_channel_attention_with_temperature():
    torch.manual_seed(0)
    m = MDTA(8, heads=2).eval()
    x = torch.randn(1, 8, 6, 6)
    base = m(x)
    with torch.no_grad():
        m.temperature.mul_(5.0)
    assert not torch.allclose(base, m(x)), "the temperature must change the attention"
    # attention is over channels, so a pixel permutation of the input permutes the output the same way
    # away from the 3x3 depthwise conv's reach: check with a 1x1-only path by zeroing the dw kernel off-centre
    with torch.no_grad():
        w = m.qkv_dwconv.weight
        w.zero_()
        w[:, :, 1, 1] = 1.0
    perm = torch.randperm(36)
    xp = x.flatten(2)[..., perm].reshape_as(x)
    torch.testing.assert_close(m(xp).flatten(2), m(x).flatten(2)[..., perm], atol=1e-5, rtol=1e-5)


def test_mdta_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MDTA(6, heads=4)


@pytest.mark.parametrize("kind", ["T", "M", "E", "D", "C"])
@pytest.mark.parametrize("shape", [(2, 16, 9, 13), (1, 16, 8, 8)])
def test_every_block_kind_preserves_shape_and_trains(kind, shape):
    block = build_block(kind, shape[1], 2)
    x = torch.randn(*shape)
    y = block(x)
    assert y.shape == x.shape
    # the zero-initialised residual scales of EFM make the first step's grads reach only them: nudge
    for p in block.parameters():
        with torch.no_grad():
            if p.abs().sum() == 0:
                p.fill_(0.1)
    block(x).square().mean().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters with no gradient: {missing}"


def test_transformer_block_gdfn_hidden_width():
    b = TransformerBlock(48, heads=1, ffn_expansion=2.66)
    assert b.ffn.project_in.out_channels == 2 * int(48 * 2.66)


def test_efm_starts_as_identity_and_gate_in_unit_range():
    b = EFMBlock(16)
    x = torch.randn(1, 16, 10, 12)
    torch.testing.assert_close(b(x), x)
    m = b.degradation_map(x)
    assert m.shape == (1, 1, 10, 12)
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


def test_efm_gate_modulates_features():
    torch.manual_seed(1)
    b = EFMBlock(8)
    with torch.no_grad():
        b.beta.fill_(1.0)
    x = torch.randn(1, 8, 6, 6)
    y1 = b(x)
    with torch.no_grad():
        b.ldg.to_map.bias.fill_(-50.0)  # gate closed: m = 0, f' = f
    y0 = b(x)
    assert not torch.allclose(y1, y0)


def test_efm_forward_is_the_figure_written_out():
    """The block computes f' = f * (1 + m) (QDR's LDG), though it is written f + f * m for INT8 fusion."""
    torch.manual_seed(2)
    b = EFMBlock(8)
    with torch.no_grad():
        b.beta.normal_()
        b.gamma.normal_()
        b.ldg.to_map.bias.fill_(0.3)
    x = torch.randn(2, 8, 7, 9)
    u = b.norm1(x)
    a, g = b.dw(b.pw_in(u)).chunk(2, dim=1)
    m = torch.sigmoid(b.ldg.to_map(torch.relu(b.ldg.dw(b.ldg.reduce(u)))))
    x1 = x + b.beta * b.pw_out(a * g * (1.0 + m))
    h1, h2 = b.pw_f1(b.norm2(x1)).chunk(2, dim=1)
    torch.testing.assert_close(b(x), x1 + b.gamma * b.pw_f2(h1 * h2))


def test_efm_mini_is_the_gated_branch_alone():
    """Kind D: x + beta * PW_out(SG(DW(PW_in(x)))), with no norm, gate or feed-forward, so fewer ops than G."""
    torch.manual_seed(3)
    d, g = build_block("D", 8, 1), build_block("G", 8, 1)
    assert d.ldg is None and not d.has_ffn and d.gamma is None
    assert sum(p.numel() for p in d.parameters()) < sum(p.numel() for p in g.parameters()) / 2
    with torch.no_grad():
        d.beta.normal_()
    x = torch.randn(2, 8, 7, 9)
    a, b = d.dw(d.pw_in(x)).chunk(2, dim=1)
    torch.testing.assert_close(d(x), x + d.beta * d.pw_out(a * b))
    with pytest.raises(ValueError, match="no degradation gate"):
        d.degradation_map(x)
    y = d(x)
    d.fold_layer_scales()
    assert d.beta is None
    torch.testing.assert_close(d(x), y, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind, global_context", [("E", False), ("C", True)])
def test_efm_sca_gives_each_pixel_the_whole_image(kind, global_context):
    """Kind C's channel attention pools the whole input: a pixel far outside the convs' 3x3 reach moves the output
    at the other corner. E's output there stays exactly the same."""
    torch.manual_seed(4)
    b = build_block(kind, 8, 1)
    with torch.no_grad():
        b.beta.normal_()
        b.gamma.normal_()
        if global_context:
            b.sca.proj.weight.normal_()
    x = torch.randn(1, 8, 12, 12)
    x2 = x.clone()
    x2[..., 11, 11] += 5.0 * torch.randn(8)  # not a constant: the per-pixel LayerNorm would cancel that
    moved = (b(x2) - b(x))[..., 0, 0].abs().max()
    assert (moved > 1e-4) if global_context else (moved == 0)


def test_efm_sca_is_the_figure_written_out():
    """C's branch: f = SG(DW(PW_in(LN x))), then f * PW_a(GAP(f)) (NAFNet's SCA), then the LDG gate."""
    torch.manual_seed(5)
    c = build_block("C", 8, 1)
    with torch.no_grad():
        c.beta.normal_()
    x = torch.randn(2, 8, 7, 9)
    u = c.norm1(x)
    a, g = c.dw(c.pw_in(u)).chunk(2, dim=1)
    f = a * g
    f = f * c.sca.proj(f.mean(dim=(2, 3), keepdim=True))
    m = c.ldg(u)
    x1 = x + c.beta * c.pw_out(f * (1.0 + m))
    h1, h2 = c.pw_f1(c.norm2(x1)).chunk(2, dim=1)
    torch.testing.assert_close(c(x), x1 + c.gamma * c.pw_f2(h1 * h2))


def test_registry_rejects_duplicates_and_unknown():
    with pytest.raises(ValueError, match="already registered"):
        register_block("T", "again", "dup")(lambda d, h: torch.nn.Identity())
    with pytest.raises(KeyError, match="unknown block kind"):
        build_block("Z", 8, 1)
    assert {"T", "M", "E"} <= set(block_kinds())


def test_presets_match_restormer_paper():
    cfg = get_preset("paper")
    assert cfg.dim == 48 and cfg.num_blocks == (4, 6, 6, 8) and cfg.num_refinement_blocks == 4
    m = HybridUNet(cfg)
    n = count_params(m)
    assert abs(n - 26.1e6) < 0.1e6, n  # Restormer: 26.1M parameters
    widths = [s.dim for s in stage_layout(cfg)]
    assert widths == [48, 96, 192, 384, 192, 96, 96, 96]
    with pytest.raises(KeyError):
        get_preset("huge")


@pytest.mark.parametrize("hw", [(16, 16), (17, 23), (9, 31)])
def test_unet_odd_sizes_and_latent(micro_cfg, hw):
    m = HybridUNet(micro_cfg, uniform_kinds(micro_cfg, "E")).eval()
    x = torch.rand(2, 3, *hw)
    y, lat = m(x, return_latent=True)
    assert y.shape == x.shape
    assert lat.shape == (2, 8 * micro_cfg.dim, -(-hw[0] // 8), -(-hw[1] // 8))
    # zero-initialised EFM residuals: the network starts as conv embed -> ... -> output conv + x
    assert torch.isfinite(y).all()


def test_unet_kind_validation(micro_cfg):
    bad = uniform_kinds(micro_cfg, "T")
    bad["enc2"] = ["T"]  # depth 2
    with pytest.raises(ValueError, match="enc2 has 2 blocks"):
        HybridUNet(micro_cfg, bad)


def test_supernet_weights_are_a_superset_of_any_subnet(micro_cfg):
    supernet = HybridUNet(micro_cfg, candidates=["T", "M", "E"])
    kinds = uniform_kinds(micro_cfg, "E")
    kinds["lat"] = ["T", "M"]
    sub = HybridUNet(micro_cfg, kinds)
    missing = set(sub.state_dict()) - set(supernet.state_dict())
    assert not missing
    sub.load_state_dict({k: supernet.state_dict()[k] for k in sub.state_dict()})
    supernet.set_kinds(kinds)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(sub.eval()(x), supernet.eval()(x))
    assert supernet.kinds() == kinds
    with pytest.raises(ValueError, match="not a candidate"):
        HybridUNet(micro_cfg).set_kinds(uniform_kinds(micro_cfg, "E"))


def test_macs_grow_with_area_and_transformers(micro_cfg):
    t = HybridUNet(micro_cfg)
    e = HybridUNet(micro_cfg, uniform_kinds(micro_cfg, "E"))
    assert count_macs(t, (1, 3, 32, 32)) * 4 == pytest.approx(count_macs(t, (1, 3, 64, 64)), rel=0.05)
    assert count_macs(e, (1, 3, 32, 32)) < count_macs(t, (1, 3, 32, 32))


def test_config_round_trips_through_dict():
    cfg = UNetConfig(dim=8, block_options={"M": {"d_state": 4}})
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_efm_folds_its_layer_scales_exactly():
    torch.manual_seed(0)
    block = EFMBlock(8).eval()
    with torch.no_grad():
        block.beta.uniform_(-1, 1)
        block.gamma.uniform_(-1, 1)
    x = torch.randn(1, 8, 6, 6)
    want = block(x)
    block.fold_layer_scales()
    assert block.beta is None and block.gamma is None
    assert "beta" not in block.state_dict() and "gamma" not in block.state_dict()
    torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)
    block.fold_layer_scales()  # nothing left to fold: a no-op
    torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)
