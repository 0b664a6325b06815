"""Params, MACs and ONNX Runtime CPU latency of each block kind and of all-T / all-M / all-E networks.

    python bench/bench_networks.py [--presets tiny,paper] [--shape 1x3x256x256] [--threads 2]

Prints one JSON object. Blocks: width 48 on a 64x64 map. Networks: every block of one kind, at the
given shape. Latency: ort-cpu with fixed threads, warm-up, and the files of each group interleaved
over several rounds (median and p90 in ms); ``loadavg`` is recorded because a busy machine inflates
every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from blocks import HybridUNet, build_block, get_preset
from blocks.stats import count_macs, count_params
from blocks.unet import uniform_kinds
from profilers.onnx_export import export_onnx, max_abs_error
from profilers.ort_cpu import OrtCpuProfiler

KINDS = ("T", "M", "E")


def measure_group(models: dict[str, torch.nn.Module], shape: tuple[int, ...], prof: OrtCpuProfiler, tmp: Path):
    paths, out = [], {}
    for name, m in models.items():
        m.eval()
        p = export_onnx(m, shape, tmp / f"{name}.onnx")
        paths.append(p)
        x = torch.rand(*shape)
        out[name] = {"params": count_params(m), "macs": count_macs(m, shape),
                     "onnx_max_abs_err": max_abs_error(m, p, x)}
    for name, r in zip(models, prof.measure_many(paths, shape), strict=True):
        out[name].update(median_ms=round(r.median_ms, 3), p90_ms=round(r.p90_ms, 3), runs=r.runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,paper")
    ap.add_argument("--shape", default="1x3x256x256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    shape = tuple(int(v) for v in args.shape.split("x"))
    prof = OrtCpuProfiler(threads=args.threads, runs=args.runs, rounds=args.rounds, warmup=1)
    result = {"threads": args.threads, "loadavg_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result["blocks_C48_64x64"] = measure_group({k: build_block(k, 48, 1) for k in KINDS}, (1, 48, 64, 64),
                                                   prof, tmp)
        for preset in args.presets.split(","):
            cfg = get_preset(preset)
            nets = {f"all-{k}": HybridUNet(cfg, uniform_kinds(cfg, k)) for k in KINDS}
            result[f"{preset}_{args.shape}"] = measure_group(nets, shape, prof, tmp)
    result["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
