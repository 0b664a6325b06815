"""``ens finalize``: picking, QDR losses and SPARK, QAT to a Q/DQ ONNX checked in ONNX Runtime, the report,
TensorRT / AI Hub targets without their tools, atomic output, CLI errors.

Fast by construction: a hand-made zoo of the micro U-Net (random weights, kinds T, M, E) and a study
written directly with Optuna (no search), 32x32 patches, a couple of training steps, one thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch
from safetensors.torch import save_file

from blocks import HybridUNet, UNetConfig
from ens.errors import EnsError
from ens.finalize import EngineNotBuilt, FinalizeOptions, PickError, QDRConfig, knee_index, pick_trial, run_finalize
from ens.finalize import export as ex
from ens.finalize.losses import MagnitudeReweighting, confidence_weights, dct2
from ens.finalize.spark import SparkTrainer, difficulty_features
from ens.report import load_study
from ens.zoo.manifest import ZooManifest, slots_of
from ens.zoo.store import file_sha256

CFG = UNetConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
ARCH_TME = "enc:T,M,E|lat:M|dec:E,M,T|ref:E"
ARCH_RUN = "enc:T,E,E|lat:M|dec:E,E,T|ref:E"  # all three kinds, one SSM block: a small graph for the real run
FRONT = [  # number, arch, psnr, latency
    (0, "enc:T,T,T|lat:T|dec:T,T,T|ref:T", 30.0, 10.0),
    (1, "enc:E,E,E|lat:E|dec:E,E,E|ref:E", 27.0, 2.0),
    (2, ARCH_TME, 29.5, 5.0),
    (3, "enc:M,M,M|lat:M|dec:M,M,M|ref:M", 28.0, 6.0),  # dominated by 2
    (4, "enc:E,M,E|lat:M|dec:E,M,E|ref:E", 28.5, 3.0),
    (5, ARCH_RUN, 27.5, 9.0),  # dominated by 2
]
FAST = dict(finetune_steps=1, qat_steps=2, batch_size=2, calib_batches=1, select_patches=4, select_images=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_zoo(root: Path) -> Path:
    zoo = root / "deblur-tiny"
    zoo.mkdir(parents=True)
    torch.manual_seed(0)
    net = HybridUNet(CFG, candidates=["T", "M", "E"])
    with torch.no_grad():  # residual branches that start at zero would make every arch the identity
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.fill_(0.2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(zoo / "zoo.safetensors"))
    m = ZooManifest(zoo_id="deblur-tiny-test", task="deblur", preset="tiny", config=CFG.to_dict(),
                    kinds=["T", "M", "E"], slots=slots_of(CFG), patch_size=32, data_source="embedded:scikit-image",
                    seed=0, val_patches=3, weights_sha256=file_sha256(zoo / "zoo.safetensors"))
    (zoo / "manifest.json").write_text(m.to_json())
    return zoo


def make_study(path: Path, zoo: Path | None, rows=FRONT, shape=(1, 3, 32, 32), profiler="proxy") -> Path:
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="deblur-tiny",
                                directions=["maximize", "minimize"])
    for k, v in {"task": "deblur", "preset": "tiny", "zoo_id": "deblur-tiny-test", "profiler": profiler,
                 "zoo_dir": str(zoo.resolve()) if zoo else "", "shape": list(shape),
                 "data": "embedded:scikit-image"}.items():
        study.set_user_attr(k, v)
    for number, arch, psnr, lat in rows:
        t = optuna.trial.create_trial(values=[psnr, lat], user_attrs={
            "arch": arch, "psnr": psnr, "ssim": 0.8, "latency": lat, "zoo_id": "deblur-tiny-test",
            "latency_profiler": profiler, "params": 1000 + number, "macs": 10_000 * lat, "transformer_count": 1})
        study.add_trial(t)
        assert study.trials[-1].number == number
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("finalize")
    zoo = make_zoo(root / "zoo")
    return root, zoo, make_study(root / "study.db", zoo)


@pytest.fixture(scope="module")
def trt_run(world):
    """One real finalize (trt_int8 with no TensorRT here): QAT, Q/DQ export, ORT checks, report, then the error."""
    root, _, db = world
    out = root / "final"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(EngineNotBuilt) as err:
            run_finalize(FinalizeOptions(storage=str(db), export="trt_int8", out=str(out), trial=5,
                                         qdr=QDRConfig(**FAST), train_patches=8, calib_patches=2, samples=2,
                                         eval_images=1, latency_rounds=1, latency_runs=2, show_progress=False,
                                         device="cpu", amp="off"), log=lambda s: None)
    finally:
        torch.set_num_threads(n)
    return out, err.value


# -- picking ------------------------------------------------------------------------------------
def test_ort_slower_note_only_when_int8_is_slower():
    from ens.finalize.pipeline import ort_slower_note

    assert "model_fp32.onnx" in ort_slower_note(0.72)
    assert ort_slower_note(1.0) is None and ort_slower_note(1.3) is None and ort_slower_note(None) is None
    assert "placement is TensorRT's" in ort_slower_note(0.9, "trt")
    assert "QLinearConv" in ort_slower_note(0.9, "ort") and "TensorRT's" not in ort_slower_note(0.9, "ort")


def test_placement_follows_the_export_target():
    from ens.finalize.qat import placement_for

    assert placement_for("onnx_int8") == "ort"
    assert placement_for("trt_int8") == placement_for("qnn_int8") == "trt"
    assert placement_for("onnx_int8", "trt") == "trt" and placement_for("trt_int8", "ort") == "ort"
    with pytest.raises(EnsError, match="placement"):
        QDRConfig(placement="everywhere")


def test_knee_index():
    assert knee_index([27.0, 29.5, 30.0], [2.0, 5.0, 10.0]) == 1
    assert knee_index([30.0], [4.0]) == 0
    assert knee_index([28.0, 30.0], [1.0, 2.0]) == 0  # two points always tie: the faster one
    assert knee_index([28.0, 30.0, 29.0], [1.0, 2.0, 1.0]) == 2  # same cost: the better one


def test_pick_by_number_budget_and_knee(world, tmp_path):
    study = load_study(world[2])
    p = pick_trial(study, trial=3)
    assert (p.number, p.how, p.on_front) == (3, "trial", False)
    assert pick_trial(study, latency_budget=4.0).number == 4
    assert pick_trial(study, latency_budget=100).number == 0
    k = pick_trial(study)
    assert (k.how, k.number, k.front_size) == ("knee", 2, 4)
    assert pick_trial(study, pick="knee").number == 2
    # a trial recorded as a duplicate resolves to the original
    s2 = optuna.load_study(study_name="deblur-tiny", storage=f"sqlite:///{world[2]}")
    s2.add_trial(optuna.trial.create_trial(values=[29.5, 5.0], user_attrs={"arch": ARCH_TME, "duplicate_of": 2}))
    assert pick_trial(load_study(world[2]), trial=6).number == 2

    for kw, msg in [({"trial": 99}, "not a completed"), ({"latency_budget": 1.0}, "fastest takes 2"),
                    ({"trial": 1, "pick": "knee"}, "only one"), ({"pick": "best"}, "unknown --pick"),
                    ({"latency_budget": -1.0}, "positive")]:
        with pytest.raises(PickError, match=msg):
            pick_trial(study, **kw)
    empty = make_study(tmp_path / "empty.db", None, rows=[])
    with pytest.raises(PickError, match="no completed trial"):
        pick_trial(load_study(empty))


# -- losses, LMR, SPARK -------------------------------------------------------------------------
def test_losses_lmr_and_spark():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(dct2(x).pow(2).sum(), x.pow(2).sum(), rtol=1e-4)  # orthonormal: Parseval
    w = confidence_weights(torch.zeros(1, 3, 4, 4), torch.rand(1, 3, 4, 4))
    assert w.shape == (1, 1, 4, 4) and float(w.min()) >= 0.1 - 1e-6 and float(w.max()) <= 0.75 + 1e-6

    lmr = MagnitudeReweighting(["rec", "kd"])
    losses = {"rec": torch.tensor(0.05, requires_grad=True), "kd": torch.tensor(0.002, requires_grad=True)}
    total = lmr(losses)
    assert lmr.weights()["kd"] == pytest.approx(500.0, rel=1e-3)  # starts balanced: exp(-s_i) L_i = 1
    total.backward()
    assert torch.allclose(lmr.log_weights.grad, torch.zeros(2), atol=1e-5)  # ... at the optimum in s
    assert float(losses["kd"].grad) == pytest.approx(500.0, rel=1e-3)  # grad L_i / L_i

    torch.manual_seed(0)
    y, s, t = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    f = difficulty_features(y, s, t)
    assert f.shape == (2, 4, 8, 8) and torch.isfinite(f).all()
    sp = SparkTrainer()
    before = [p.detach().clone() for p in sp.policy.parameters()]
    for r in (0.1, 0.3, -0.2):
        wmap = sp.weights(y, s, t)
        assert wmap.shape == (2, 1, 8, 8) and torch.allclose(wmap.mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-4)
        sp.update(r)
    assert any(not torch.equal(a, b) for a, b in zip(before, sp.policy.parameters(), strict=True))
    assert sp.summary()["steps"] == 3


# -- the real run -------------------------------------------------------------------------------
def test_qat_exports_qdq_int8_checked_in_ort(trt_run):
    out, _ = trt_run
    model = onnx.load(str(out / "model_int8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {"CumSum", "Exp", "Softplus"} <= ops  # the SSM scan is there ...
    prec = ex.precision_breakdown(out / "model_int8.onnx")
    assert prec["int8"].get("Conv", 0) > 20
    for op in ("CumSum", "Exp", "Softplus", "MatMul", "Softmax"):  # ... and stays in floating point
        assert op not in prec["int8"], op
    r = json.loads((out / "report.json").read_text())
    chk = r["checks"]
    assert chk["fp32_onnx_max_abs"] <= 1e-4
    assert chk["int8_vs_fakequant"]["rmse"] <= ex.INT8_TOLERANCE["rmse"]
    assert chk["int8_vs_fakequant"]["max_abs"] <= ex.INT8_TOLERANCE["max_abs"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["ens.arch"] == ARCH_RUN and meta["ens.precision"] == "int8"


def test_report_fields(trt_run):
    out, _ = trt_run
    r = json.loads((out / "report.json").read_text())
    assert r["arch"] == ARCH_RUN and r["trial"]["number"] == 5 and r["trial"]["how"] == "trial"
    assert r["params"] > 0 and r["macs"] > 0 and r["shape"] == [1, 3, 32, 32]
    q = r["quality"]
    for key in ("degraded", "fp32", "fp32_onnx", "int8_qdr", "int8_ptq", "int8_fakequant_torch"):
        assert math.isfinite(q[key]["psnr"]) and 0 < q[key]["ssim"] <= 1, key
    assert q["int8_qdr"]["recovery_pct"] == pytest.approx(100 * q["int8_qdr"]["psnr"] / q["fp32"]["psnr"], abs=1e-2)
    assert abs(q["fp32_onnx"]["psnr"] - q["fp32"]["psnr"]) < 1e-2
    lat = r["latency"]["ort_cpu"]
    assert lat["fp32"]["median_ms"] > 0 and lat["int8"]["median_ms"] > 0 and lat["speedup"] > 0
    assert "proxy" in lat["note"]
    assert ("use model_fp32.onnx" in lat["note"]) == (lat["speedup"] < 1.0)
    shares = lat["int8_time_shares"]
    assert shares["integer_pct"] + shares["qdq_pct"] + shares["float_pct"] == pytest.approx(100, abs=0.2)
    assert shares["qdq_pct"] > 0 and shares["top_float_ops"], "the trt placement: Q/DQ around float convs"
    assert r["training"]["compute"]["device"] == "cpu"
    qz = r["quantization"]
    assert qz["quantized_layers"] > 20 and "CumSum" in qz["ops"]["float"] and "SSM scan" in qz["higher_precision_note"]
    assert qz["higher_precision_note"].startswith("Only convolutions are INT8")
    assert qz["placement"] == "trt" and qz["activation_type"] == "int8" and qz["quantized_outputs"] == 0
    assert qz["ort_cpu_convs"]["float"] > 0  # TensorRT's placement: convs feeding float ops stay float in ORT
    assert qz["weight_bits"] == 8 and "full INT8 range" in qz["weight_bits_note"]  # TensorRT does not saturate
    assert "QDQ fusion off" in q["int8_runtime"]  # trt_int8 quality: the Q/DQ graph as written
    t = r["training"]
    assert t["qat"]["steps"] == 2 and set(t["qat"]["lmr_weights"]) == {"rec", "kd"} and "exp(-s_i)" in t["lmr_formula"]
    assert {f["file"] for f in r["export"]["files"]} >= {"model_fp32.onnx", "model_int8.onnx", "build_engine.sh"}
    sel = t["qat"]["extra"]["selection"]  # the calibrated start and the last step, on 1 whole training image
    assert sel["by"] == "whole" and sel["images"] == 1 and set(sel["psnr_by_step"]) == {"0", "2"}
    assert sel["sizes"] == [[512, 512]], "the first embedded training image (astronaut), at most 512 px a side"
    assert sel["psnr_by_step"][str(sel["picked_step"])] == max(sel["psnr_by_step"].values())
    w = q["whole_images"]  # the embedded deblur split's first whole image, through the shipped 32x32 files
    assert w["images"] == 1 and w["sizes"] == [[296, 448]] and w["tile"] == [32, 32] and w["overlap"] == 8
    for key in ("degraded", "fp32_torch_untiled", "fp32_onnx", "int8_qdr", "int8_ptq"):
        assert math.isfinite(w[key]["psnr"]) and 0 < w[key]["ssim"] <= 1, key
    assert w["degraded"]["psnr"] != pytest.approx(q["degraded"]["psnr"], abs=1e-3)  # not the patches
    assert w["int8_qdr"]["recovery_pct"] == pytest.approx(100 * w["int8_qdr"]["psnr"] / w["fp32_onnx"]["psnr"],
                                                          abs=1e-2)
    assert w["qdr_minus_ptq_db"] == pytest.approx(w["int8_qdr"]["psnr"] - w["int8_ptq"]["psnr"], abs=1e-3)
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Quality on whole held-out images (1: 296x448)" in card and "32x32 tiles" in card
    assert ARCH_RUN in card and "INT8, QDR" in card and "plain PTQ" in card and "NOT built" in card
    assert "in integer kernels" in card and "in Q/DQ conversions" in card
    assert f"QAT state kept: step {sel['picked_step']}, the best PSNR on 1 whole training image " in card
    ft_sel = t["finetune"]["extra"]["selection"]  # the zoo's weights and the one fine-tuning step, on the same image
    assert ft_sel["by"] == "whole" and set(ft_sel["psnr_by_step"]) == {"0", "1"}
    assert ft_sel["psnr_by_step"][str(ft_sel["picked_step"])] == max(ft_sel["psnr_by_step"].values())
    assert f"FP32 state kept: step {ft_sel['picked_step']}, the best PSNR on 1 whole training image " in card
    from profilers.ort_cpu import int8_dot_product

    assert lat["cpu_int8"] == int8_dot_product() and f"the CPU is {lat['cpu_int8']}" in card
    from PIL import Image

    assert Image.open(out / "samples.png").size[0] > 4 * 32


def test_trt_int8_without_tensorrt_writes_onnx_and_command(trt_run):
    out, err = trt_run
    assert "NOT built" in str(err) and "trtexec --onnx=model_int8.onnx --int8 --fp16" in str(err)
    assert err.exit_code != 0
    script = (out / "build_engine.sh").read_text()
    assert "trtexec --onnx=model_int8.onnx --int8 --fp16 --saveEngine=model_int8.engine" in script
    assert not (out / "model_int8.engine").exists()
    r = json.loads((out / "report.json").read_text())
    assert r["export"]["engine"]["built"] is False and "no trtexec" in r["export"]["engine"]["message"]
    assert not list(out.parent.glob(".final.tmp-*")) and not list(out.parent.glob(".final.work-*"))


def test_trt_engine_build_paths(tmp_path, monkeypatch):
    """The local-trtexec and SSH paths build the right commands (fake runner, no TensorRT needed)."""
    from profilers import trt as trtmod

    onnx_file = tmp_path / "model_int8.onnx"
    onnx_file.write_bytes(b"onnx")
    calls = []

    class Proc:
        def __init__(self, rc=0, out=""):
            self.returncode, self.stdout, self.stderr = rc, out, ""

    def runner(argv, timeout):
        calls.append(list(argv))
        if argv[0] == "scp" and ":" in argv[-2]:  # copying the engine back
            Path(argv[-1]).write_bytes(b"engine")
        if argv[0].endswith("trtexec"):
            Path(argv[-1].split("=", 1)[1]).write_bytes(b"engine")
        return Proc(0, "/usr/src/tensorrt/bin/trtexec\n" if "command" in argv[-1] else "")

    monkeypatch.setattr(trtmod, "_tensorrt_importable", lambda: False)
    monkeypatch.setattr(trtmod.shutil, "which", lambda name: "/opt/trt/bin/trtexec")
    res = ex.build_trt_engine(onnx_file, tmp_path / "model_int8.engine", None, runner=runner)
    assert res.built and res.method == "trtexec"
    assert calls[-1][:4] == ["/opt/trt/bin/trtexec", f"--onnx={onnx_file.resolve()}", "--int8", "--fp16"]

    monkeypatch.setattr(trtmod.shutil, "which", lambda name: None)
    (tmp_path / "model_int8.engine").unlink()
    calls.clear()
    res = ex.build_trt_engine(onnx_file, tmp_path / "model_int8.engine", "trt:ssh://nvidia@orin.local/tmp/e",
                              runner=runner)
    assert res.built and res.method == "trtexec-ssh" and (tmp_path / "model_int8.engine").read_bytes() == b"engine"
    assert calls[0][0] == "ssh" and "nvidia@orin.local" in calls[0]
    assert any(c[0] == "scp" and c[-1].startswith("nvidia@orin.local:/tmp/e/") for c in calls)
    assert any("--saveEngine=/tmp/e/" in " ".join(c) for c in calls)
    none = ex.build_trt_engine(onnx_file, tmp_path / "x.engine", None, runner=runner)
    assert not none.built and none.command.startswith("trtexec --onnx=model_int8.onnx")


# -- fail fast, fail clean ----------------------------------------------------------------------
def test_qnn_int8_without_token_is_a_clear_error(world, tmp_path, monkeypatch):
    from profilers.errors import MissingToken, ProfilerUnavailable

    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "nope.ini"))
    with pytest.raises((MissingToken, ProfilerUnavailable), match="token|qai-hub"):
        run_finalize(FinalizeOptions(storage=str(world[2]), export="qnn_int8", out=str(tmp_path / "q"),
                                     show_progress=False), log=lambda s: None)
    assert not (tmp_path / "q").exists()
    # a study measured on AI Hub: its profiler is checked before any training, with a way out
    db = make_study(tmp_path / "hub.db", world[1], profiler="qaihub:Snapdragon 8 Elite QRD")
    with pytest.raises(EnsError, match="--profiler ort-cpu"):
        run_finalize(FinalizeOptions(storage=str(db), export="onnx_int8", out=str(tmp_path / "q"),
                                     show_progress=False), log=lambda s: None)
    assert not (tmp_path / "q").exists()


def test_out_folder_is_atomic_on_failure(world, tmp_path, monkeypatch):
    """A disk-full error while writing the report leaves neither a half-written --out nor temp folders,
    and an existing --out (replaced with --force) is kept intact."""
    import ens.finalize.report as rep

    out = tmp_path / "final"
    out.mkdir()
    (out / "old.txt").write_text("previous run")

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rep, "atomic_write_text", disk_full)
    opts = FinalizeOptions(storage=str(world[2]), export="onnx_fp32", out=str(out), trial=1, force=True,
                           qdr=QDRConfig(finetune_steps=0, batch_size=2), train_patches=4, samples=1, eval_images=0,
                           latency_rounds=1, latency_runs=1, show_progress=False)
    with pytest.raises(EnsError, match="No space left"):
        run_finalize(opts, log=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    with pytest.raises(EnsError, match="--force"):
        run_finalize(FinalizeOptions(storage=str(world[2]), export="onnx_fp32", out=str(out)), log=lambda s: None)
    (tmp_path / "w.safetensors").write_bytes(b"not weights")
    with pytest.raises(EnsError, match="cannot read --init"):
        run_finalize(FinalizeOptions(storage=str(world[2]), export="onnx_fp32", out=str(tmp_path / "o2"),
                                     init_weights=str(tmp_path / "w.safetensors"), train_patches=4),
                     log=lambda s: None)
    assert not (tmp_path / "o2").exists()


def test_cli_errors_exit_2(world, tmp_path, capsys):
    from ens.cli import main

    for args, msg in [(["--export", "tflite"], "unknown --export"), (["--export", "onnx_int8", "--trial", "42"],
                                                                     "trial 42"),
                      (["--export", "onnx_int8", "--kd", "decoder"], "unknown KD mode"),
                      (["--export", "onnx_int8", "--patch-size", "44"], "multiple of 8"),
                      (["--export", "onnx_int8", "--select-by", "held-out"], "unknown --select-by 'held-out'")]:
        with pytest.raises(SystemExit) as e:
            main(["finalize", str(world[2]), "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as e:
        main(["finalize", str(tmp_path / "missing.db"), "--export", "onnx_int8", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_int8_check_rejects_a_mismatched_graph(tmp_path):
    """The INT8 check compares ORT with the fake-quant model: a graph of another model fails it."""
    from ens.finalize.qat import quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 3, 3, padding=1))
    x = torch.rand(2, 3, 16, 16)
    q = quantize_model(net, [x])
    ex.export_int8(q, (1, 3, 16, 16), tmp_path / "q.onnx")
    err = ex.check_int8(q, tmp_path / "q.onnx", x)  # batch 2 through a batch-1 file: looped
    assert err["rmse"] < 1e-4 and np.isfinite(err["max_abs"])
    with torch.no_grad():
        q[2].weight.mul_(-1.0)
    with pytest.raises(ex.ExportError, match="differs from the fake-quant"):
        ex.check_int8(q, tmp_path / "q.onnx", x)


class _Skip(torch.nn.Module):
    """conv -> GELU -> conv, whose output feeds two ops (the case ORT's own S8->U8 rewrite misses), -> output conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.output = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h = self.b(torch.nn.functional.gelu(self.a(x)))
        return self.output(h * torch.sigmoid(h) + h) + x


def test_ort_placement_with_uint8_activations_is_exact_and_fuses_convs(tmp_path):
    from ens.finalize.qat import quant_summary, quantize_model
    from ens.finalize.qdq_uint8 import activations_to_uint8
    from profilers.onnx_graph import GraphIndex

    x = torch.rand(2, 3, 16, 16)
    files = {}
    for placement in ("trt", "ort"):
        torch.manual_seed(0)
        q = quantize_model(_Skip(), [x], placement=placement)
        assert quant_summary(q)["quantized_outputs"] == (2 if placement == "ort" else 0)  # not the final conv
        files[placement] = tmp_path / f"{placement}.onnx"
        ex.export_int8(q, (1, 3, 16, 16), files[placement])
        assert ex.check_int8(q, files[placement], x)["rmse"] < 1e-3
    u8 = tmp_path / "ort_u8.onnx"
    changed = activations_to_uint8(files["ort"], u8)
    model = onnx.load(str(u8))
    index = GraphIndex.of(model.graph)
    zps = {"QuantizeLinear": set(), "DequantizeLinear": set()}
    for n in model.graph.node:
        if n.op_type in zps:
            zps[n.op_type].add(str(index.value(n.input[2]).dtype))
    assert changed >= 8 and "uint8" in zps["QuantizeLinear"] and "int8" in zps["DequantizeLinear"]  # weights stay S8
    s8_out, u8_out = ex.OnnxModel(files["ort"], fuse_qdq=False)(x), ex.OnnxModel(u8, fuse_qdq=False)(x)
    assert torch.equal(s8_out, u8_out)  # the rewrite changes no value (every Q/DQ run as written)
    kernels = {k: ex.ort_conv_kernels(p) for k, p in (*files.items(), ("ort_u8", u8))}
    assert kernels["trt"]["int8"] == 0 and kernels["trt"]["float"] == 3  # inputs-only: nothing fuses
    assert kernels["ort_u8"] == {"int8": 2, "float": 1}  # all but the float-output final conv
    assert kernels["ort"]["int8"] < kernels["ort_u8"]["int8"]  # S8 output Q next to a U8 input DQ does not fuse


class _EfmNet(torch.nn.Module):
    """stem conv -> one EFM block (two residual sums) -> output conv + input: the smallest real residual net."""

    def __init__(self) -> None:
        super().__init__()
        from blocks.efm import EFMBlock

        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.block = EFMBlock(8)
        self.output = torch.nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            self.block.beta.fill_(0.5)
            self.block.gamma.fill_(-0.3)

    def forward(self, x):
        return self.output(self.block(self.stem(x))) + x


def test_ort_placement_quantizes_the_elementwise_ops_into_qlinear_kernels(tmp_path):
    """With the ``ort`` placement each residual sum, simple gate, LDG sigmoid and LDG gate product gets an output
    fake quantizer (their inputs come quantized from convs and earlier ops), the ONNX Runtime CPU graph runs them
    as QLinearAdd / QLinearMul / QLinearSigmoid and matches the fake-quant model; ``trt`` leaves them float."""
    from ens.finalize.qat import quant_summary, quantize_model

    x = torch.rand(2, 3, 16, 16)
    # one EFM block: sums add1, add2 and the gate's f + f*m; products: the two simple gates and f*m; one sigmoid
    for placement, (adds, muls, sigmoids) in (("trt", (0, 0, 0)), ("ort", (3, 3, 1))):
        torch.manual_seed(0)
        q = quantize_model(_EfmNet(), [x], placement=placement)
        assert quant_summary(q)["quantized_elementwise"] == {"Add": adds, "Mul": muls, "Sigmoid": sigmoids,
                                                             "Concat": 0}
        path = tmp_path / f"{placement}.onnx"
        ex.export_int8(q, (1, 3, 16, 16), path, uint8_activations=placement == "ort")
        kernels = ex.ort_kernels(path)
        assert (kernels["QLinearAdd"], kernels["QLinearMul"], kernels["QLinearSigmoid"]) == (adds, muls, sigmoids)
        if placement == "ort":  # nothing element-wise is left in float, the LDG's ReLU included
            assert kernels["Add"] == kernels["Mul"] == kernels["Sigmoid"] == kernels["Relu"] == 0
            assert ex.conv_kernels(kernels) == {"int8": 9, "float": 1}  # all 10 convs but the output's
        assert ex.check_int8(q, path, x)["rmse"] < 1e-3
        assert ex.check_int8(q, path, x, fuse_qdq=False)["rmse"] < 1e-3  # every Q/DQ run as written


def test_the_ldg_relu_is_the_zero_clip_of_an_unsigned_quantizer():
    """``ort`` placement: the LDG's depthwise output is left unquantized and the ReLU's output is quantized on the
    unsigned grid (0..255, zero point 0), whose clip at zero is the ReLU itself, so ORT can drop the Relu node.
    The fake-quant values all lie on that grid, at twice the resolution of the signed one."""
    from ens.finalize.qat import quantize_model

    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    q = quantize_model(_EfmNet(), [x], placement="ort")
    ldg = q.block.ldg
    assert not ldg.dw.output_quantizer.is_enabled and ldg.to_map.input_quantizer.is_enabled
    assert ldg.to_map.input_quantizer.unsigned and not ldg.reduce.input_quantizer.unsigned
    seen = {}
    ldg.to_map.register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0]))
    with torch.no_grad():
        q(x)
    u = ldg.to_map.input_quantizer(seen["in"].detach())
    step = float(ldg.to_map.input_quantizer.amax) / 255
    levels = u / step
    assert float(u.min()) == 0.0 and torch.allclose(levels, levels.round(), atol=1e-3)
    assert int(levels.round().max()) > 127  # the signed grid would stop at 127
    torch.manual_seed(0)
    trt = quantize_model(_EfmNet(), [x], placement="trt")
    assert trt.block.ldg.dw.output_quantizer.is_enabled is False and not trt.block.ldg.to_map.input_quantizer.unsigned


def _ort_load_log(path) -> str:
    """What ONNX Runtime prints when a user loads ``path`` with default settings (a fresh process: its C++ log
    goes to the process's stderr)."""
    import subprocess
    import sys

    code = "import onnxruntime as ort, sys; ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout + res.stderr


def test_uint8_int8_file_loads_without_warnings(tmp_path):
    """The onnx_int8 file (ModelOpt Q/DQ, activations rewritten to U8): no dead Constant is left for ONNX Runtime
    to warn about ("Removing initializer ... It is not used by any node"), and pruning changes no value."""
    from ens.finalize.qat import quantize_model
    from ens.finalize.qdq_uint8 import activations_to_uint8
    from profilers.onnx_graph import prune_dead_nodes

    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    q = quantize_model(_Skip(), [x], placement="ort")
    s8, u8 = tmp_path / "s8.onnx", tmp_path / "u8.onnx"
    ex.export_int8(q, (1, 3, 16, 16), s8)
    activations_to_uint8(s8, u8)
    assert "Removing initializer" not in _ort_load_log(u8)
    dead = onnx.load(str(u8))
    dead.graph.node.extend([onnx.helper.make_node("Constant", [], ["orphan"], value=onnx.numpy_helper.from_array(
        np.zeros(1, np.int8)))])
    onnx.save(dead, str(tmp_path / "dead.onnx"))
    assert "Removing initializer 'orphan'" in _ort_load_log(tmp_path / "dead.onnx"), "the check can see a warning"
    assert prune_dead_nodes(dead) == (1, 0)
    kept = onnx.load(str(u8))
    assert prune_dead_nodes(kept) == (0, 0), "the shipped file holds nothing dead"
    assert torch.equal(ex.OnnxModel(s8, fuse_qdq=False)(x), ex.OnnxModel(u8, fuse_qdq=False)(x))


def test_ptq_baseline_is_a_qdq_graph(tmp_path, caplog):
    from blocks.norm import LayerNorm2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 3, 3, padding=1))
    ex.export_fp32(net, (1, 3, 16, 16), tmp_path / "f.onnx")
    calib = [np.random.default_rng(i).random((1, 3, 16, 16), dtype=np.float32) for i in range(2)]
    with caplog.at_level("WARNING"):
        ex.ptq_int8(tmp_path / "f.onnx", tmp_path / "p.onnx", calib)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], "quantize_static's LayerNorm axis noise"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "p.onnx")).graph.node}
    err = ex.ort_vs_torch(net, tmp_path / "p.onnx", torch.from_numpy(calib[0]))
    assert err["rmse"] < 0.05


def test_ablate_runs_every_qdr_variant_through_ort(world, tmp_path):
    from ens.finalize.qat import ABLATIONS

    out = tmp_path / "abl"
    run_finalize(FinalizeOptions(storage=str(world[2]), export="onnx_int8", out=str(out), trial=1, ablate=True,
                                 qdr=QDRConfig(**FAST), train_patches=4, patch_size=40, calib_patches=2, samples=1,
                                 eval_images=0, latency_rounds=1, latency_runs=1, show_progress=False),
                 log=lambda s: None)
    r = json.loads((out / "report.json").read_text())
    shares = r["latency"]["ort_cpu"]["int8_time_shares"]
    assert "QLinearConv" in shares["integer_ops"] and shares["integer_pct"] > 0, "onnx_int8: fused integer convs"
    assert "Removing initializer" not in _ort_load_log(out / "model_int8.onnx")
    ab = r["ablation"]
    assert set(ab) == set(ABLATIONS)
    for name, v in ab.items():
        assert math.isfinite(v["psnr"]) and 0 < v["ssim"] <= 1, name
        assert v["recovery_pct"] == pytest.approx(100 * v["psnr"] / r["quality"]["fp32"]["psnr"], abs=1e-2)
    assert ab["qdr"]["psnr"] == pytest.approx(r["quality"]["int8_qdr"]["psnr"], abs=1e-6)  # the main run itself
    assert ab["no_kd"]["lmr_weights"] is None and set(ab["kd_output"]["lmr_weights"]) == {"rec", "kd"}
    qz = r["quantization"]  # onnx_int8: the placement ONNX Runtime fuses, U8 activations
    assert qz["placement"] == "ort" and qz["activation_type"].startswith("uint8") and qz["quantized_outputs"] > 20
    assert qz["ort_cpu_convs"]["int8"] > qz["ort_cpu_convs"]["float"]
    ew = qz["quantized_elementwise"]
    assert "skip joins" in qz["higher_precision_note"] and "residual sums" in qz["higher_precision_note"]
    for op in ("Add", "Mul", "Sigmoid", "Concat"):
        assert 0 < qz["ort_cpu_integer_kernels"][f"QLinear{op}"] <= ew[op], op
    assert r["training"]["config"]["placement"] == "ort"
    assert r["training"]["train_patch_size"] == 40 and r["quality"]["patch_size"] == 32  # held-out patches: the zoo's
    assert "whole_images" not in r["quality"]  # eval_images=0
    from ens.finalize.qat import weight_bits_for

    assert qz["weight_bits"] == r["training"]["config"]["weight_bits"] == weight_bits_for("onnx_int8", "ort")
    assert "fused integer kernels" in r["quality"]["int8_runtime"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Ablation" in card and all(f"| {name} |" in card for name in ABLATIONS)
    assert f"{qz['weight_bits']}-bit weights" in card and "INT8 files run by: ONNX Runtime" in card
    assert f"QLinearAdd x{qz['ort_cpu_integer_kernels']['QLinearAdd']}" in card


def test_int8_pairs_saturate_on_x86_without_vnni_only():
    from profilers.ort_cpu import int8_pairs_saturate

    assert int8_pairs_saturate("x86_64", frozenset({"avx2", "fma"}))
    assert int8_pairs_saturate("AMD64", frozenset())  # flags unknown: assume the worst
    assert not int8_pairs_saturate("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert not int8_pairs_saturate("x86_64", frozenset({"avx2", "avx_vnni"}))
    assert not int8_pairs_saturate("aarch64", frozenset({"asimd"}))
    from profilers.ort_cpu import int8_dot_product

    assert int8_dot_product("x86_64", frozenset({"avx2"})).startswith("x86 without VNNI")
    assert int8_dot_product("x86_64", frozenset({"avx512_vnni", "avx_vnni"})) == (
        "x86 with VNNI (avx512_vnni, avx_vnni): 32-bit sums")
    assert "32-bit" in int8_dot_product("aarch64", frozenset())


def test_weight_bits_follow_the_target_and_the_cpu(monkeypatch):
    import profilers.ort_cpu as oc
    from ens.finalize.qat import QDRConfig, weight_bits_for

    for saturates, want in ((True, 7), (False, 8)):
        monkeypatch.setattr(oc, "int8_pairs_saturate", lambda saturates=saturates: saturates)
        assert weight_bits_for("onnx_int8", "ort") == want
        assert weight_bits_for("trt_int8", "trt") == 8 and weight_bits_for("qnn_int8", "trt") == 8
        assert weight_bits_for("onnx_int8", "trt") == 8  # no fused convs, nothing saturates
        assert weight_bits_for("onnx_int8", "ort", requested=8) == 8
    with pytest.raises(EnsError, match="weight-bits"):
        QDRConfig(weight_bits=6)


def test_seven_bit_weights_halve_the_range_and_run_fused_in_ort(tmp_path):
    """weight_bits=7: every INT8 weight lies in [-64, 64] (also after QAT's range re-sync), so ORT's fused
    u8 x s8 kernels cannot saturate, and the fused U8 graph matches the fake-quant model on any x86 CPU."""
    from ens.finalize.qat import RangeSchedule, quant_modules, quantize_model
    from ens.finalize.qdq_uint8 import activations_to_uint8

    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    q8 = quantize_model(_Skip(), [x], placement="ort")
    torch.manual_seed(0)
    q7 = quantize_model(_Skip(), [x], placement="ort", weight_bits=7)
    sched = RangeSchedule(q7, weight_bits=7)
    for (_, m8), (_, m7) in zip(quant_modules(q8), quant_modules(q7), strict=True):
        torch.testing.assert_close(m7.weight_quantizer.amax, 2 * m8.weight_quantizer.amax)
    with torch.no_grad():
        for _, m in quant_modules(q7):
            m.weight.mul_(1.5)  # as if QAT had moved the weights
    sched.sync_weights()
    sched.close()
    for _, m in quant_modules(q7):
        w = m.weight.detach()
        steps = (w / (m.weight_quantizer.amax.reshape(-1, 1, 1, 1) / 127)).round().abs().max()
        assert 60 <= float(steps) <= 64
    path = tmp_path / "q7.onnx"
    ex.export_int8(q7, (1, 3, 16, 16), path)
    activations_to_uint8(path)
    assert ex.ort_conv_kernels(path)["int8"] == 2
    assert ex.check_int8(q7, path, x, fuse_qdq=True)["rmse"] < 2 / 255


def test_ptq_calibration_does_not_depend_on_the_training_before_it():
    """The PTQ baseline's inputs are the same after any number of QAT steps (each step sets the augmentation
    epoch of the training pool; the calibration once read whatever the last step left)."""
    from ens.data.datasets import PatchDataset
    from ens.finalize.pipeline import ptq_calibration
    from ens.tasks import get_task

    clean = torch.rand(8, 3, 8, 8).half()
    ds = PatchDataset(clean + 0.25, clean, task=get_task("denoise"), split="train", info={}, augment=True)
    first = ptq_calibration(ds, 6)
    ds.set_epoch(37)
    assert any(not np.array_equal(a, ds[i][0].unsqueeze(0).numpy()) for i, a in enumerate(first))  # epochs differ
    again = ptq_calibration(ds, 6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    centres = ptq_calibration(ds, 6, size=4)  # larger training patches: the evaluation file's size, the centre
    assert all(c.shape == (1, 3, 4, 4) and np.array_equal(c, a[..., 2:6, 2:6]) for c, a in zip(centres, first,
                                                                                               strict=True))


def _recording_pool(n: int = 4, size: int = 8) -> tuple[object, list[int]]:
    """A training pool whose factory records the rounds it is asked for; each round's pool differs."""
    from ens.data.datasets import PatchDataset
    from ens.tasks import get_task

    rounds: list[int] = []

    def factory(round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        rounds.append(round_)
        g = torch.Generator().manual_seed(round_)
        clean = torch.rand(n, 3, size, size, generator=g)
        return (clean + 0.1 * torch.randn(n, 3, size, size, generator=g)).half(), clean.half()

    deg, clean = factory(0)
    rounds.clear()
    return PatchDataset(deg, clean, task=get_task("denoise"), split="train", info={}, factory=factory), rounds


def test_fresh_pools_during_finetuning_and_qat_then_the_first_pool_back():
    from ens.finalize.qat import QAT_ROUNDS, finetune_fp32, qdr_train

    torch.manual_seed(0)
    net = HybridUNet(CFG, candidates=["E"])
    train, rounds = _recording_pool()
    first = train.degraded.clone()
    cfg = QDRConfig(finetune_steps=5, qat_steps=4, batch_size=2, calib_batches=1, resample_every=2,
                    qat_resample_every=2)
    finetune_fp32(net, train, cfg, show_progress=False)
    assert rounds == [1, 2, 0]  # after steps 2 and 4 (not after the last), then round 0 restored
    assert torch.equal(train.degraded, first)
    rounds.clear()
    finetune_fp32(net, train, cfg.variant(resample_every=0), show_progress=False)
    assert rounds == []  # one fixed pool
    qdr_train(net, train, cfg, show_progress=False)
    assert rounds == [QAT_ROUNDS + 1, 0]  # after step 2; step 4 is the last
    assert torch.equal(train.degraded, first)


def test_resample_every_must_not_be_negative():
    for bad in ({"resample_every": -1}, {"qat_resample_every": -1}):
        with pytest.raises(EnsError, match="--resample-every"):
            QDRConfig(**bad)


def test_the_unseen_photographs_bench_scores_every_shipped_file(trt_run, monkeypatch):
    """bench/bench_finalize_unseen.py on a finalize folder: each file, and a PTQ of its FP32 graph, per photo."""
    import importlib.util

    from ens.metrics import psnr
    from ens.tasks import get_task

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_finalize_unseen.py"
    spec = importlib.util.spec_from_file_location("bench_finalize_unseen", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import bench_zoo  # on sys.path once the bench module is loaded

    photos = bench_zoo.unseen_images()
    monkeypatch.setattr(bench_zoo, "unseen_images", lambda: {k: photos[k][:64, :80] for k in ("camera", "coins")})
    r = bench.score_folder(trt_run[0], seed=7, threads=1)
    rows = r["psnr"]
    assert r["task"] == "deblur" and set(rows) == {"degraded", "fp32", "int8_shipped", "int8_ptq"}
    pairs = bench_zoo.unseen_pairs(get_task("deblur"), 7)
    for name, (deg, clean) in pairs.items():
        assert rows["degraded"][name] == pytest.approx(float(psnr(deg[None], clean[None])), abs=1e-3)
        assert not torch.equal(deg, clean)
    for row in rows.values():
        assert set(row) == {"camera", "coins", "mean"}
        assert row["mean"] == pytest.approx((row["camera"] + row["coins"]) / 2, abs=1e-3)
    assert r["int8_minus_ptq_db"] == pytest.approx(rows["int8_shipped"]["mean"] - rows["int8_ptq"]["mean"], abs=2e-3)
    assert r["selection"]["by"] == "whole"


def test_finetuning_keeps_its_starting_weights_when_no_check_beats_them():
    """FP32 fine-tuning with a selection: every ``select_every`` steps (and before the first) the network is scored;
    the best state is kept. Scored against the network's own starting outputs, nothing beats step 0."""
    from ens.finalize.qat import Selection, finetune_fp32
    from ens.tasks import get_task

    torch.manual_seed(0)
    net = HybridUNet(CFG, candidates=["E"])
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.fill_(0.2)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    train, _ = _recording_pool(size=16)
    images = [torch.rand(3, 24, 32), torch.rand(3, 16, 16)]
    with torch.no_grad():
        net.eval()
        select = Selection([(x, net(x[None])[0].clamp(0, 1)) for x in images], get_task("denoise"), by="whole")
    cfg = QDRConfig(finetune_steps=4, batch_size=2, lr=1e-2, select_every=2, resample_every=0)
    log = finetune_fp32(net, train, cfg, show_progress=False, select=select)
    sel = log.extra["selection"]
    assert sel["by"] == "whole" and list(sel["psnr_by_step"]) == [0, 2, 4] and sel["picked_step"] == 0
    assert sel["psnr_by_step"][0] > max(sel["psnr_by_step"][2], sel["psnr_by_step"][4])
    assert all(torch.equal(v, start[k]) for k, v in net.state_dict().items()), "the starting weights, restored"
    moved = HybridUNet(CFG, candidates=["E"])
    moved.load_state_dict(start)
    finetune_fp32(moved, train, cfg, show_progress=False)  # no selection: the last step's weights
    assert any(not torch.equal(v, start[k]) for k, v in moved.state_dict().items())
