"""Chunked scans vs plain sequential loops on CPU; prints one JSON object.

    python bench/bench_scan.py [--threads 2] [--rounds 7] [--length 4096]

selective_scan (Mamba-1): batch 1, D=64 channels, N=16 states, L=4096 (a 64x64 image), with D skip,
z gate, delta_bias and softplus. ssd_scan (Mamba-2): batch 1, 4 heads x 16 channels (64 in all), N=16,
one B/C group, D skip, dt_bias and softplus. Both are timed against ``*_sequential`` (one step per
position, like mamba-ssm's ``selective_scan_ref``), interleaved, median over rounds.
Errors are of the float32 chunked result against the float32 loop: max |a - b|, and max |a - b| / |b|
over elements with |b| >= 1e-3 * max |b| (the relative error of near-zero outputs is meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from blocks.ssm import selective_scan, selective_scan_sequential, ssd_scan, ssd_scan_sequential


def interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time (ms) of each function, the functions taking turns in every round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def errors(actual: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    diff = (actual.double() - expected.double()).abs()
    ref = expected.double().abs()
    mask = ref >= 1e-3 * ref.max()
    return {"max_abs_err": diff.max().item(), "max_rel_err": (diff[mask] / ref[mask]).max().item()}


def compare(name: str, chunked: Callable, sequential: Callable, rounds: int) -> dict[str, float]:
    with torch.no_grad():
        t = interleaved_medians({"chunked": chunked, "sequential": sequential}, rounds)
        err = errors(chunked(), sequential())
    return {
        f"{name}_chunked_ms": round(t["chunked"], 2),
        f"{name}_sequential_ms": round(t["sequential"], 2),
        f"{name}_speedup": round(t["sequential"] / t["chunked"], 2),
        f"{name}_max_abs_err": err["max_abs_err"],
        f"{name}_max_rel_err": err["max_rel_err"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--length", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    length, d, n = args.length, 64, 16

    u = torch.randn(1, d, length, generator=g)
    delta = torch.randn(1, d, length, generator=g) - 2.0
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)  # S4D-real init
    B, C = torch.randn(1, n, length, generator=g), torch.randn(1, n, length, generator=g)
    D, z, bias = torch.ones(d), torch.randn(1, d, length, generator=g), torch.randn(d, generator=g) * 0.5
    mamba1 = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)

    h, p = 4, 16
    x = torch.randn(1, length, h, p, generator=g)
    dt = torch.randn(1, length, h, generator=g) - 2.0
    A2 = -torch.linspace(1.0, 16.0, h)
    B2, C2 = torch.randn(1, length, 1, n, generator=g), torch.randn(1, length, 1, n, generator=g)
    mamba2 = dict(D=torch.ones(h), dt_bias=torch.randn(h, generator=g) * 0.5, dt_softplus=True)

    result: dict[str, object] = {
        "device": "cpu",
        "threads": args.threads,
        "rounds": args.rounds,
        "batch": 1,
        "L": length,
        "selective_scan_shape": {"D": d, "N": n, "chunk_size": 32},
        "ssd_scan_shape": {"heads": h, "head_dim": p, "N": n, "chunk_size": 64},
        "loadavg_before": os.getloadavg()[0],
    }
    result |= compare(
        "selective_scan",
        lambda: selective_scan(u, delta, A, B, C, **mamba1),
        lambda: selective_scan_sequential(u, delta, A, B, C, **mamba1),
        args.rounds,
    )
    result |= compare(
        "ssd_scan",
        lambda: ssd_scan(x, dt, A2, B2, C2, 64, **mamba2),
        lambda: ssd_scan_sequential(x, dt, A2, B2, C2, **mamba2),
        args.rounds,
    )
    result["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
