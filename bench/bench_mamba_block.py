"""MambaBlock vs TransformerBlock at the same width: CPU latency and parameters; prints one JSON object.

    python bench/bench_mamba_block.py [--threads 2] [--rounds 9] [--cases 48x64,48x128,96x64]

For each case C x S (batch 1, input [1, C, S, S]) both blocks (default options, eval mode) are timed
in PyTorch eager (``torch.set_num_threads``) and in ONNX Runtime (legacy exporter, opset 17, CPU EP,
``intra_op_num_threads``, graph optimisations on), the two blocks taking turns in every round; reported
are the medians (ms), the min, and mamba/transformer ratios of the medians. The machine's 1-minute load
average is recorded before and after: on a shared machine, timings vary by about +-25% between runs.
Never run by pytest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable

import onnxruntime as ort
import torch
from torch import nn

from blocks.mamba import MambaBlock
from blocks.transformer import TransformerBlock


def ort_runner(block: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(block, (x,), buf, input_names=["x"], dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: sess.run(None, feed)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall times (ms) of each function over ``rounds`` rounds, the functions taking turns in each round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def bench_case(dim: int, size: int, threads: int, rounds: int) -> dict[str, object]:
    torch.manual_seed(0)
    blocks = {"mamba": MambaBlock(dim).eval(), "transformer": TransformerBlock(dim).eval()}
    x = torch.randn(1, dim, size, size)
    case: dict[str, object] = {
        "input": [1, dim, size, size],
        "params": {name: sum(p.numel() for p in b.parameters()) for name, b in blocks.items()},
    }
    with torch.no_grad():
        eager = interleaved({name: (lambda b=b: b(x)) for name, b in blocks.items()}, rounds)
    onnx = interleaved({name: ort_runner(b, x, threads) for name, b in blocks.items()}, rounds)
    for engine, times in (("torch", eager), ("ort", onnx)):
        med = {name: statistics.median(t) for name, t in times.items()}
        case[engine] = {
            "median_ms": {name: round(v, 2) for name, v in med.items()},
            "min_ms": {name: round(min(t), 2) for name, t in times.items()},
            "mamba_over_transformer": round(med["mamba"] / med["transformer"], 3),
        }
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--cases", default="48x64,48x128,96x64", help="comma-separated CxS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {
        "threads": args.threads,
        "rounds": args.rounds,
        "mamba_defaults": "MambaBlock(dim): d_state=8, expand=1, directions=2, head_dim=dim/2, "
        "chunk=auto, ffn_expansion=1, out_norm=False",
        "loadavg_before": os.getloadavg()[0],
    }
    for spec in args.cases.split(","):
        dim, size = (int(v) for v in spec.lower().split("x"))
        result[f"C{dim}_{size}x{size}"] = bench_case(dim, size, args.threads, args.rounds)
    result["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
