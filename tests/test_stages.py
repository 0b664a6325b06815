"""profilers.stages: ONNX node names of an exported HybridUNet mapped to slots, samplers, stem, output, other."""

from __future__ import annotations

import statistics

import onnx
import pytest
from onnx import TensorProto, helper
from torch import nn

from blocks.unet import STAGES, Downsample, HybridUNet, UNetConfig, Upsample, get_preset, uniform_kinds
from profilers.networks import NetworkSpec, export_network
from profilers.onnx_export import export_onnx
from profilers.ort_cpu import OrtCpuProfiler, optimized_node_owners, parse_ort_profile, scope_of
from profilers.stages import (
    OTHER,
    OUTPUT,
    OUTPUT_MODULE,
    SAMPLER,
    SAMPLER_AFTER,
    SLOT,
    STEM,
    STEM_MODULE,
    slot_label,
    stage_of,
    stage_summary,
)

# depth 2 at enc1, dec1 and ref: slot indices other than 0 are named too
MICRO = UNetConfig(dim=8, num_blocks=(2, 1, 1, 1), num_refinement_blocks=2, heads=(1, 1, 1, 1))
KINDS = {"enc1": ["T", "E"], "enc2": ["M"], "enc3": ["E"], "lat": ["T"], "dec3": ["M"], "dec2": ["E"],
         "dec1": ["E", "T"], "ref": ["M", "E"]}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    net = HybridUNet(MICRO, KINDS).eval()
    path = export_onnx(net, (1, 3, 16, 16), tmp_path_factory.mktemp("stages") / "micro.onnx")
    return net, path


def test_module_names_are_the_unets():
    cfg = get_preset("tiny")
    net = HybridUNet(cfg, uniform_kinds(cfg, "E"))
    children = dict(net.named_children())
    assert isinstance(children[STEM_MODULE], nn.Conv2d) and children[STEM_MODULE].in_channels == cfg.in_channels
    assert isinstance(children[OUTPUT_MODULE], nn.Conv2d) and children[OUTPUT_MODULE].out_channels == cfg.out_channels
    assert set(SAMPLER_AFTER) <= set(STAGES)
    for stage, name in SAMPLER_AFTER.items():
        want = Downsample if stage.startswith("enc") else Upsample
        assert isinstance(children[name], want), name
    rest = set(children) - {STEM_MODULE, OUTPUT_MODULE, "stages", *SAMPLER_AFTER.values()}
    # the 1x1 reduce convolutions and the skip joins count as "other", knowingly; a new module would need a row
    assert rest == {"reduce2", "reduce3", "join1", "join2", "join3"}


def test_stage_of_real_node_names(micro):
    net, path = micro
    convs = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    slots = {slot_label(stage, i, block.active) for stage, i, block in net.slot_blocks()}
    assert len(slots) == sum(len(v) for v in KINDS.values())
    rows = {r.stage: r.part for r in stage_summary({"by_scope": []}, KINDS)}
    got: dict[str, str] = {}
    for name in convs:
        label = stage_of(name)  # the kind read from the name itself...
        assert label == stage_of(name, KINDS), name
        assert label in rows, name  # ...is the arch's: every conv lands on a row of this arch
        got[name] = label
    assert {lbl for lbl in got.values() if rows[lbl] == SLOT} == slots  # every slot has its convs
    assert {lbl for lbl in got.values() if rows[lbl] == SAMPLER} == set(SAMPLER_AFTER.values())
    assert STEM in got.values() and OUTPUT in got.values()
    assert {n for n, lbl in got.items() if lbl == OTHER} == {"/reduce3/Conv", "/reduce2/Conv"}
    assert got["/enc1/enc1.1/E/pw_in/Conv"] == "enc1[1] E" and got["/dec1/dec1.1/T/attn/qkv/Conv"] == "dec1[1] T"


@pytest.mark.parametrize(
    "name,want",
    [
        ("/enc1/enc1.0/T/attn/qkv/Conv", "enc1[0] T"),
        ("/enc1/enc1.0/T", "enc1[0] T"),  # a scope (parse_ort_profile's by_scope)
        ("/stages/ref/ref.1/M/in_proj/Conv", "ref[1] M"),
        ("/lat/lat.0/Conv", "lat[0] E"),  # no kind in the path: the arch's
        ("/dec3/dec3.5/Conv", "dec3[5] ?"),
        ("/up2_1/up2_1.1/DepthToSpace", "up2_1"),
        ("/patch_embed/Conv", STEM),
        ("/output/Conv", OUTPUT),
        ("/reduce3/Conv", OTHER),
        ("/Concat_1", OTHER),
        ("/", OTHER),
        ("Identity_12", OTHER),
        ("", OTHER),
        ("/enc9/enc9.0/T/Conv", OTHER),
        ("/enc1/x/T/Conv", OTHER),
    ],
)
def test_stage_of_names(name, want):
    assert stage_of(name, {"lat": ["E"], "dec3": ["T"]}) == want


def test_stage_summary_rows_in_flow_order_and_shares():
    bd = {"by_scope": [
        {"scope": "/enc1/enc1.0/T", "ms": 3.0, "nodes": 10},
        {"scope": "/enc1/enc1.1/E", "ms": 1.0, "nodes": 4},
        {"scope": "/patch_embed", "ms": 0.5, "nodes": 1},
        {"scope": "/down1_2/down1_2.0", "ms": 0.25, "nodes": 1},
        {"scope": "/down1_2/down1_2.1", "ms": 0.25, "nodes": 3},
        {"scope": "/", "ms": 0.5, "nodes": 2},
        {"scope": "", "ms": 0.5, "nodes": 1},
        {"scope": "/enc2/enc2.3/M", "ms": 4.0, "nodes": 1},  # not a slot of the arch: a row of its own
    ]}
    rows = stage_summary(bd, KINDS)
    labels = [r.stage for r in rows]
    assert labels[:4] == [STEM, "enc1[0] T", "enc1[1] E", "down1_2"] and labels[-2:] == ["enc2[3] M", OTHER]
    assert labels.index("up4_3") == labels.index("lat[0] T") + 1 and labels.index(OUTPUT) > labels.index("ref[1] E")
    by = {r.stage: r for r in rows}
    assert by["down1_2"].ms == 0.5 and by["down1_2"].nodes == 4 and by["down1_2"].part == SAMPLER
    assert by[OTHER].ms == 1.0 and by[OTHER].nodes == 3 and by["dec2[0] E"].ms == 0.0
    assert by["enc1[0] T"].share == pytest.approx(0.3) and sum(r.share for r in rows) == pytest.approx(1.0)
    assert by["enc1[0] T"].to_dict() == {"stage": "enc1[0] T", "part": SLOT, "ms": 3.0, "share": 0.3, "nodes": 10}
    assert stage_summary({"top_nodes": []}, KINDS) == []  # no by_scope: nothing to sum


def test_scope_of():
    assert scope_of("/enc1/enc1.0/T/attn/qkv/Conv") == "/enc1/enc1.0/T"
    assert scope_of("/enc2/enc2.0/M/scan/Mul/QuickGeluFusion/") == "/enc2/enc2.0/M"
    assert scope_of("/patch_embed/Conv_output_0_nchwc") == "/patch_embed"
    assert scope_of("/Concat") == "/" and scope_of("ReorderOutput_token_3") == ""


def test_optimized_node_owners_synthetic(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="/enc1/enc1.0/T/qkv/Conv"),
        helper.make_node("Gelu", ["a"], ["b"], name="Gelu_token_1"),  # a fusion: counts under its producer
        helper.make_node("Transpose", ["b"], ["c"], name="Transpose_token_2"),  # two hops away
        helper.make_node("ReorderInput", ["c"], ["d"], name="ReorderInput", domain="com.microsoft.nchwc"),
        helper.make_node("Conv", ["d", "w"], ["y"], name="/down1_2/down1_2.0/Conv"),  # ...the input reorder's
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
                                           helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    owners = optimized_node_owners(tmp_path / "g.onnx")
    assert owners == {"Gelu_token_1": "/enc1/enc1.0/T/qkv/Conv", "Transpose_token_2": "/enc1/enc1.0/T/qkv/Conv",
                      "ReorderInput": "/down1_2/down1_2.0/Conv"}
    assert optimized_node_owners(tmp_path / "missing.onnx") == {}
    ev = [{"cat": "Session", "name": "model_run", "dur": 10}]
    ev += [{"cat": "Node", "name": f"{n.name}_kernel_time", "dur": 2, "args": {"op_name": n.op_type}} for n in nodes]
    bd = parse_ort_profile(ev, runs=1, owners=owners)
    assert {r["scope"]: (r["ms"], r["nodes"]) for r in bd["by_scope"]} == {
        "/enc1/enc1.0/T": (0.006, 3), "/down1_2/down1_2.0": (0.004, 2)}


def test_ort_profile_of_an_export_assigns_every_node(micro):
    _, path = micro
    bd = OrtCpuProfiler(threads=1, breakdown_runs=1).profile_ops(path, (1, 3, 16, 16))
    scopes = {r["scope"] for r in bd["by_scope"]}
    assert "" not in scopes  # every node ORT made (reorders, fusions) counts under a module
    assert sum(r["ms"] for r in bd["by_scope"]) == pytest.approx(bd["total_kernel_ms"])
    rows = stage_summary(bd, KINDS)
    assert all(r.nodes > 0 for r in rows) and sum(r.share for r in rows) == pytest.approx(1.0)
    other = next(r for r in rows if r.stage == OTHER)
    assert other.nodes <= 12  # 2 reduce convs, 3 concats, the residual add, and their layout reorders


def test_a_transformer_slot_outweighs_an_edge_slot_at_its_level(tmp_path):
    """All-E but dec1 = T: dec1 and ref run at the same width (2C) and resolution; T costs ~2x E there."""
    cfg = get_preset("tiny")
    kinds = {**uniform_kinds(cfg, "E"), "dec1": ["T"]}
    shape = (1, 3, 32, 32)
    path = export_network(NetworkSpec(kinds, cfg.to_dict(), shape), tmp_path / "n.onnx")
    prof = OrtCpuProfiler(threads=1, breakdown_runs=4)
    shares = []
    for _ in range(5):  # the median of 5 profiled passes: a stall on a busy machine spoils one pass, not the test
        by = {r.stage: r.share for r in stage_summary(prof.profile_ops(path, shape), kinds)}
        shares.append((by["dec1[0] T"], by["ref[0] E"]))
    t, e = (statistics.median(col) for col in zip(*shares, strict=True))
    assert t > 1.2 * e, shares
