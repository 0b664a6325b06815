"""The newcomer's path in one test: zoo, a search on two Ray workers, finalize to INT8 ONNX.

The micro U-Net and a handful of training steps keep it fast; what is asserted is that every stage
hands the next one what it needs, and that the shipped INT8 model runs in ONNX Runtime.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
from optuna.trial import TrialState

from blocks import UNetConfig
from ens.finalize import FinalizeOptions, QDRConfig, run_finalize
from ens.search.driver import SearchOptions, run_search
from ens.zoo.build import build_zoo
from ens.zoo.manifest import MANIFEST
from search_spaces import Arch

CFG = UNetConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.timeout(900)  # the whole pipeline, Ray start-up included: over 300 s once on a loaded 2-core machine
def test_zoo_search_with_two_workers_then_finalize_int8(tmp_path, micro_recipe):
    zoo_root = tmp_path / "zoo"
    zoo_dir = build_zoo("deblur", "tiny", out_root=zoo_root, config=CFG, recipe=micro_recipe, show_progress=False,
                        log=lambda s: None)
    manifest = json.loads((zoo_dir / MANIFEST).read_text())
    assert manifest["task"] == "deblur" and set(manifest["kinds"]) >= {"T", "M", "E"}

    db = tmp_path / "study.db"
    opts = SearchOptions(task="deblur", objective="psnr,latency", profiler="proxy", trials=6, workers=2,
                         storage=str(db), preset="tiny", zoo_root=str(zoo_root), shape="1x3x32x32",
                         sampler="random", seed=1)
    study, summary = run_search(opts, log=lambda m: None)
    assert summary.completed >= 6
    done = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{db}").get_trials(
        states=(TrialState.COMPLETE,))
    assert len(done) >= 6
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in done}
    for t in done:
        a = t.user_attrs
        assert Arch.parse(a["arch"]).hash == a["arch_hash"]
        assert a["zoo_id"] == manifest["zoo_id"] and np.isfinite(a["psnr"])
        assert a["latency"] == a["transformer_count"]  # the proxy profiler: a count, not a time
        assert a["eval_device"] == "cpu", "--device auto in a Ray trial without GPUs: the CPU"
        assert t.values == [a["psnr"], a["latency"]]
    assert len({t.user_attrs["arch_hash"] for t in done}) == len(done), "no architecture evaluated twice"
    assert str(os.getpid()) not in workers, "trials ran in Ray worker processes"

    out = tmp_path / "final"
    report = run_finalize(FinalizeOptions(storage=str(db), export="onnx_int8", out=str(out),
                                          qdr=QDRConfig(finetune_steps=2, qat_steps=2, batch_size=2, calib_batches=1,
                                                        select_patches=4, select_images=1),
                                          train_patches=8, calib_patches=2, samples=1, eval_images=0, latency_rounds=1,
                                          latency_runs=2, show_progress=False), log=lambda s: None)
    r = json.loads((out / "report.json").read_text())
    assert r["arch"] in {t.user_attrs["arch"] for t in done}
    assert r["quality"]["int8_qdr"]["recovery_pct"] > 0 and r["export"]["target"] == "onnx_int8"
    assert report.report["arch"] == r["arch"] and (out / "MODEL_CARD.md").is_file()

    model = onnx.load(str(out / "model_int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    sess = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(r["shape"], dtype=np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y - x).mean() < 0.5
