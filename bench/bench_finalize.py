"""QDR finalize of a study's trial: FP32 vs INT8 (QDR) vs plain PTQ quality and ORT CPU latency; one JSON object.

    python bench/bench_finalize.py STUDY.db [--trial N | --latency-budget MS] [--finetune-steps 200]
        [--qat-steps 200] [--batch-size 8] [--ablate] [--torch-threads 1] [--out DIR]

Runs ``ens finalize --export onnx_int8`` (into a temporary folder unless ``--out``), then re-times the
deployed files interleaved: FP32, the QDR Q/DQ INT8 and the plain post-training-quantized INT8
(ONNX Runtime ``quantize_static`` of the same fine-tuned FP32 model, calibrated on training patches),
with a wall clock at 2 threads and a CPU clock at 1 thread (stable on a shared machine). Quality is
measured by ONNX Runtime on the held-out split at the zoo's patch size. The 1-minute load average is
recorded before and after. Never run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ort_placement(student, r, shape, xs, calib, tmp: Path, data=None):
    """The QDR-trained weights with the fake quantizers switched off, re-quantized by ORT quantize_static
    (its own placement: conv outputs, Add, Mul, ... as well), calibrated like the PTQ baseline."""
    import copy

    from modelopt.torch.quantization.nn import TensorQuantizer

    from ens.data import load_pairs
    from ens.finalize import export as ex
    from ens.tasks import get_task

    m = copy.deepcopy(student)
    for q in m.modules():
        if isinstance(q, TensorQuantizer):
            q.disable()
    patch = r["quality"]["patch_size"]
    task = get_task(r["task"])
    ex.export_fp32(m, (1, 3, patch, patch), tmp / "qdr_fp32_eval.onnx", xs[:1])
    ex.export_fp32(m, shape, tmp / "qdr_fp32_deploy.onnx", None)
    reduce = r.get("quantization", {}).get("weight_bits") == 7  # as finalize's PTQ baseline on this CPU
    ex.ptq_int8(tmp / "qdr_fp32_eval.onnx", tmp / "qdr_ortq_eval.onnx", [x[None].numpy() for x in xs[:32]],
                reduce_range=reduce)
    deploy = ex.ptq_int8(tmp / "qdr_fp32_deploy.onnx", tmp / "qdr_ortq_deploy.onnx", calib, reduce_range=reduce)
    val = load_pairs(task, data, "val", patch_size=patch, num_patches=r["quality"]["pairs"])
    q = ex.evaluate_onnx(tmp / "qdr_ortq_eval.onnx", [val[i] for i in range(len(val))], task)
    fp = r["quality"]["fp32"]["psnr"]
    return deploy, {**q.to_dict(), "recovery_pct": round(100 * q.psnr / fp, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("storage")
    ap.add_argument("--trial", type=int, default=None)
    ap.add_argument("--latency-budget", type=float, default=None)
    ap.add_argument("--finetune-steps", type=int, default=200)
    ap.add_argument("--qat-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4, help="FP32 fine-tuning learning rate")
    ap.add_argument("--qat-lr", type=float, default=5e-5)
    ap.add_argument("--train-patches", type=int, default=512)
    ap.add_argument("--shape", default=None, help="deployed input shape (default: the study's)")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--spark", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch intra-op threads for training (1 is much faster on a busy shared machine)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=None)
    ap.add_argument("--init", default=None, help="FP32 weights of a previous run (model_fp32.safetensors)")
    ap.add_argument("--placement", default="auto", choices=["auto", "trt", "ort"],
                    help="Q/DQ placement of the QAT model (auto: ort, as --export onnx_int8)")
    ap.add_argument("--also-time", action="append", default=[], metavar="NAME=ONNX",
                    help="another ONNX file of the deployed shape to time in the same interleaved rounds")
    ap.add_argument("--ort-placement", action="store_true",
                    help="also: the QDR-trained weights re-quantized with ORT quantize_static's placement")
    args = ap.parse_args()

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    from ens.data import load_pairs
    from ens.finalize import FinalizeOptions, QDRConfig, run_finalize
    from ens.finalize import export as ex
    from ens.finalize.pipeline import _tile_like
    from ens.report import load_study

    load0 = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="bench-finalize-")
    out = Path(args.out) if args.out else Path(tmp) / "final"
    cfg = QDRConfig(finetune_steps=args.finetune_steps, qat_steps=args.qat_steps, batch_size=args.batch_size,
                    lr=args.lr, qat_lr=args.qat_lr, spark=args.spark, placement=args.placement)
    t0 = time.monotonic()
    res = run_finalize(FinalizeOptions(storage=args.storage, export="onnx_int8", out=str(out), trial=args.trial,
                                       latency_budget=args.latency_budget, qdr=cfg, ablate=args.ablate,
                                       shape=args.shape, train_patches=args.train_patches, force=True,
                                       init_weights=args.init,
                                       show_progress=False), log=lambda s: print(s, file=sys.stderr))
    wall = time.monotonic() - t0
    r = res.report
    shape = tuple(r["shape"])

    # PTQ of the deployed FP32 file (calibrated on training patches tiled to the deployed shape)
    attrs = load_study(args.storage).user_attrs
    data = attrs.get("data")
    data = None if (not data or str(data).startswith("embedded")) else data
    patch = r["quality"]["patch_size"]
    train = load_pairs(r["task"], data, "train", patch_size=patch, seed=0, num_patches=args.train_patches)
    xs = torch.stack([train[i][0] for i in range(min(len(train), 64))])
    calib = [_tile_like(xs[i:], shape).numpy() for i in range(0, 8, 2)]
    ptq = ex.ptq_int8(out / "model_fp32.onnx", Path(tmp) / "ptq_deploy.onnx", calib)
    files = {"fp32": out / "model_fp32.onnx", "int8_qdr": out / "model_int8.onnx", "int8_ptq": ptq}
    for item in args.also_time:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            sys.exit(f"--also-time wants NAME=ONNX_FILE, got {item!r}")
        files[name] = Path(path)
    extra_quality = {}
    if args.ort_placement:
        files["int8_qdr_ortq"], extra_quality["int8_qdr_ortq"] = ort_placement(
            res.models["int8"], r, shape, xs, calib, Path(tmp), data)
    lat_wall = ex.ort_cpu_latency(files, shape, threads=2, rounds=args.rounds, runs=5, clock="wall")
    lat_cpu = ex.ort_cpu_latency(files, shape, threads=1, rounds=args.rounds, runs=5, clock="cpu")

    def lat(d):
        return {k: round(d[k]["median_ms"], 2) for k in files} | {
            f"{k}_speedup": round(d["fp32"]["median_ms"] / d[k]["median_ms"], 3) for k in files if k != "fp32"} | {
            "device": d["device"]}

    q = r["quality"]
    result = {
        "study": args.storage, "trial": r["trial"]["number"], "arch": r["arch"], "params": r["params"],
        "macs": r["macs"], "shape": r["shape_str"], "task": r["task"],
        "held_out": {"pairs": q["pairs"], "patch_size": patch, "metric": q["metric"]},
        "quality": {k: q.get(k) for k in ("degraded", "fp32", "fp32_onnx", "int8_qdr", "int8_fakequant_torch",
                                          "int8_ptq")} | extra_quality,
        "recovery_pct": {"int8_qdr": q["int8_qdr"]["recovery_pct"], "int8_ptq": q["int8_ptq"]["recovery_pct"]},
        "ort_cpu_latency_ms": {"wall_2_threads": lat(lat_wall), "cpu_1_thread": lat(lat_cpu)},
        "checks": r["checks"],
        "quantization": {k: r["quantization"].get(k) for k in ("placement", "activation_type", "quantized_layers",
                                                                "quantized_outputs", "ort_cpu_convs")},
        "training": {"finetune_steps": args.finetune_steps, "qat_steps": args.qat_steps,
                     "batch_size": args.batch_size, "lmr_weights": r["training"]["qat"].get("lmr_weights"),
                     "finetune_s": r["training"]["finetune"]["seconds"], "qat_s": r["training"]["qat"]["seconds"]},
        "ablation": r.get("ablation"),
        "wall_s": round(wall, 1),
        "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "out": str(out) if args.out else None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
