"""Params, MACs and ONNX Runtime CPU latency of each block kind and of the uniform networks (all-T, all-M...).

    python bench/bench_networks.py [--presets tiny,paper] [--kinds T,M,E] [--shape 1x3x256x256] [--threads 2]
        [--int8]

Prints one JSON object. Blocks: width 48 on a 64x64 map. Networks: every block of one kind, at the
given shape (default: every registered kind). Latency: ort-cpu with fixed threads, warm-up, and the files of
each group interleaved over several rounds (median and p90 in ms); ``loadavg`` is recorded because a busy
machine inflates every figure. ``--int8`` adds each network's INT8 graph (the one ``ens finalize --export
onnx_int8`` ships, :mod:`ens.finalize.int8_graph`) to the same interleaved batch, and its speed-up over all-T
FP32 and over its own FP32 export.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from blocks import HybridUNet, block_kinds, build_block, get_preset
from blocks.stats import count_macs, count_params
from blocks.unet import uniform_kinds
from profilers.onnx_export import export_onnx, max_abs_error
from profilers.ort_cpu import OrtCpuProfiler


def measure_group(models: dict[str, torch.nn.Module], shape: tuple[int, ...], prof: OrtCpuProfiler, tmp: Path,
                  int8: bool = False):
    paths, out = [], {}
    for name, m in models.items():
        m.eval()
        p = export_onnx(m, shape, tmp / f"{name}.onnx")
        paths.append(p)
        x = torch.rand(*shape)
        out[name] = {"params": count_params(m), "macs": count_macs(m, shape),
                     "onnx_max_abs_err": max_abs_error(m, p, x)}
    names = list(models)
    if int8:
        from ens.finalize.int8_graph import export_deployed_int8

        for name, m in models.items():
            export_deployed_int8(m, shape, tmp / f"{name}.int8.onnx")
            paths.append(tmp / f"{name}.int8.onnx")
            names.append(f"{name}/int8")
            out[f"{name}/int8"] = {}
    for name, r in zip(names, prof.measure_many(paths, shape, "auto"), strict=True):
        out[name].update(median_ms=round(r.median_ms, 3), p90_ms=round(r.p90_ms, 3), runs=r.runs)
    if int8 and "all-T" in out:
        for name in models:
            q = out[f"{name}/int8"]
            q["speedup_vs_all_T_fp32"] = round(out["all-T"]["median_ms"] / q["median_ms"], 3)
            q["speedup_vs_own_fp32"] = round(out[name]["median_ms"] / q["median_ms"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,paper")
    ap.add_argument("--shape", default="1x3x256x256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(block_kinds()))
    ap.add_argument("--int8", action="store_true", help="also time each network's onnx_int8 graph, interleaved")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    torch.manual_seed(0)
    shape = tuple(int(v) for v in args.shape.split("x"))
    prof = OrtCpuProfiler(threads=args.threads, runs=args.runs, rounds=args.rounds, warmup=1)
    result = {"threads": args.threads, "loadavg_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result["blocks_C48_64x64"] = measure_group({k: build_block(k, 48, 1) for k in kinds}, (1, 48, 64, 64),
                                                   prof, tmp)
        for preset in args.presets.split(","):
            cfg = get_preset(preset)
            nets = {f"all-{k}": HybridUNet(cfg, uniform_kinds(cfg, k)) for k in kinds}
            for net in nets.values():  # non-zero residual scales, as in a trained network (E/L/F/G start at zero)
                for p in net.parameters():
                    if p.dim() == 4 and p.shape[0] == 1 and not p.any():
                        p.data.fill_(0.1)
            result[f"{preset}_{args.shape}"] = measure_group(nets, shape, prof, tmp, int8=args.int8)
    result["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
