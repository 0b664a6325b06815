"""Does INT8 pay on ONNX Runtime CPU, and at what width? FP32 vs two Q/DQ placements per preset.

    python bench/bench_int8_width.py [--presets tiny,small,paper] [--kinds T,E] [--shape 1x3x128x128]
        [--threads 1] [--clock cpu] [--rounds 3] [--runs 3] [--relu-fold-ab]

For each preset and uniform network (random weights: latency only, no quality):

- ``fp32``: the FP32 ONNX;
- ``int8_modelopt``: the Q/DQ graph finalize's QAT exports for ``trt_int8`` (ModelOpt, INT8 on every
  conv's input and weights, max-calibrated on random inputs; TensorRT's placement);
- ``int8_modelopt_ort``: the one it exports for ``onnx_int8`` (conv outputs quantized too, all but the
  final conv's, and every element-wise op of blocks.ops: sums, gates, sigmoids, skip joins; activations
  rewritten S8 -> U8, pixel shuffles on the 8-bit side (``export_int8(uint8_activations=True)``); 7-bit
  weight ranges where this CPU's kernels saturate, as finalize does: ``ens.finalize.qat.weight_bits_for``);
- ``int8_ort``: ONNX Runtime ``quantize_static`` of the FP32 file (QDQ, its own placement: conv
  outputs, Add, Mul, MatMul as well; ``reduce_range`` where the weights are 7-bit above).

Timed interleaved by ``ens.finalize.export.ort_cpu_latency``; the CPU clock at one thread is stable on
a shared machine. Prints one JSON object with each file's median and its speed-up over FP32, and the
share of kernel time in integer kernels, Q/DQ and float ops (``ens.finalize.export.int8_time_shares``) of the
file onnx_int8 ships and of ORT's own placement. Needs ``ens[qat]``; never run by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blocks import HybridUNet, get_preset  # noqa: E402
from blocks.stats import count_macs, count_params  # noqa: E402
from blocks.unet import uniform_kinds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small,paper")
    ap.add_argument("--kinds", default="T,E")
    ap.add_argument("--shape", default="1x3x128x128")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="cpu", choices=("cpu", "wall"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--relu-fold-ab", action="store_true", help="also time the onnx_int8 graph without the LDG's "
                    "ReLU fold (ens.finalize.qat.RELU_FOLD): its ReLU quantized on the signed grid, left float")
    args = ap.parse_args()

    from ens.finalize import export as ex
    from ens.finalize.qat import quantize_model, weight_bits_for

    torch.manual_seed(0)
    torch.set_num_threads(2)
    shape = tuple(int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    calib_np = [rng.random(shape, dtype=np.float32) for _ in range(2)]
    calib = [torch.from_numpy(a) for a in calib_np]
    bits = weight_bits_for("onnx_int8", "ort")  # as finalize exports onnx_int8 on this CPU
    result: dict = {"shape": args.shape, "threads": args.threads, "clock": args.clock, "onnx_int8_weight_bits": bits,
                    "loadavg_1min_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for preset in args.presets.split(","):
            cfg = get_preset(preset)
            for kind in args.kinds.split(","):
                net = HybridUNet(cfg, uniform_kinds(cfg, kind)).eval()
                name = f"{preset}/all-{kind}"
                files = {"fp32": tmp / "fp32.onnx", "int8_modelopt": tmp / "modelopt.onnx",
                         "int8_modelopt_ort": tmp / "modelopt_ort.onnx", "int8_ort": tmp / "ort.onnx"}
                if args.relu_fold_ab:
                    files["int8_modelopt_ort_relu_float"] = tmp / "modelopt_ort_relu_float.onnx"
                ex.export_fp32(net, shape, files["fp32"], calib[0])
                with contextlib.redirect_stderr(io.StringIO()):
                    qnet = quantize_model(copy.deepcopy(net), calib)
                    ex.export_int8(qnet, shape, files["int8_modelopt"])
                    qnet = quantize_model(copy.deepcopy(net), calib, placement="ort", weight_bits=bits)
                    ex.export_int8(qnet, shape, files["int8_modelopt_ort"], uint8_activations=True)
                    ex.ptq_int8(files["fp32"], files["int8_ort"], calib_np, reduce_range=bits == 7)
                    if args.relu_fold_ab:
                        qnet = quantize_model(copy.deepcopy(net), calib, placement="ort", weight_bits=bits,
                                              relu_fold=False)
                        ex.export_int8(qnet, shape, files["int8_modelopt_ort_relu_float"], uint8_activations=True)
                lat = ex.ort_cpu_latency(files, shape, threads=args.threads, rounds=args.rounds, runs=args.runs,
                                         clock=args.clock)
                int8_keys = [k for k in files if k != "fp32"]
                fastest = min(int8_keys, key=lambda k: lat[k]["median_ms"])
                result[name] = {
                    "width": cfg.dim, "params": count_params(net), "macs": count_macs(net, shape),
                    **{f"{k}_ms": round(lat[k]["median_ms"], 1) for k in files},
                    **{f"{k}_speedup": round(lat["fp32"]["median_ms"] / lat[k]["median_ms"], 3)
                       for k in files if k != "fp32"},
                    "ort_cpu_convs": {k: ex.ort_conv_kernels(files[k]) for k in int8_keys},
                    "ort_cpu_float_relu": {k: ex.ort_kernels(files[k])["Relu"] for k in int8_keys},
                    "fastest_int8": fastest,
                    "time_shares": {k: ex.int8_time_shares(files[k], shape, threads=args.threads)
                                    for k in ("int8_modelopt_ort", "int8_ort")},
                }
                print(name, json.dumps(result[name]), file=sys.stderr)
        result["device"] = lat["device"]
    result["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
