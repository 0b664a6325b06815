"""Why a latency table misses: its error per random architecture, against the measurement noise.

    python bench/bench_lut_error.py --table PATH [--n 20] [--seed 1] [--threads 2] [--repeats 2]

Exports ``--n`` seeded random architectures (one kind per stage, as ``ens calibrate --verify``) in the table's
precision, measures them ``--repeats`` times with ``ens``'s ort-cpu profiler (each repeat interleaved over all
files, as the table was calibrated), and prints one JSON object: per architecture the prediction, each repeat's
measurement, the error against their mean, and the repeat-to-repeat spread (the noise no table can beat); then
the error grouped by how many stages hold each kind (which kind the table mis-costs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blocks.unet import UNetConfig  # noqa: E402
from ens.profiling import export_arch, random_archs, statistic_of  # noqa: E402
from profilers.lut import LatencyTable  # noqa: E402
from profilers.ort_cpu import OrtCpuProfiler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    table = LatencyTable.load(args.table)
    cfg = UNetConfig.from_dict(table.config)
    shape = tuple(table.input_shape)
    prof = OrtCpuProfiler(threads=args.threads, runs=args.runs)
    archs = random_archs(args.n, cfg, table.kinds, args.seed)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ens-luterr-") as tmp:
        paths = [export_arch(a, cfg, shape, Path(tmp) / f"{a.hash}.onnx", precision=table.precision) for a in archs]
        repeats = [[statistic_of(r, table.statistic) for r in prof.measure_many(paths, shape, table.precision)]
                   for _ in range(args.repeats)]
    rows = []
    for i, arch in enumerate(archs):
        got = [rep[i] for rep in repeats]
        mean = statistics.fmean(got)
        pred = table.predict(arch.block_kinds(cfg))
        rows.append({"arch": str(arch), "predicted_ms": round(pred, 2), "measured_ms": [round(g, 2) for g in got],
                     "error_pct": round(100 * (pred - mean) / mean, 1),
                     "noise_pct": round(100 * (max(got) - min(got)) / mean, 1)})
    by_kind: dict[str, dict[int, list[float]]] = {}
    for arch, row in zip(archs, rows, strict=True):
        kinds = [ks[0] for ks in arch.block_kinds(cfg).values()]
        for k in table.kinds:
            by_kind.setdefault(k, {}).setdefault(kinds.count(k), []).append(row["error_pct"])
    errs = [abs(r["error_pct"]) for r in rows]
    print(json.dumps({
        "table": args.table, "precision": table.precision, "statistic": table.statistic, "n": args.n,
        "repeats": args.repeats, "threads": args.threads, "seconds": round(time.perf_counter() - t0, 1),
        "loadavg_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "median_abs_error_pct": round(statistics.median(errs), 1),
        "within_10pct": round(sum(e <= 10 for e in errs) / len(errs), 2),
        "median_noise_pct": round(statistics.median(r["noise_pct"] for r in rows), 1),
        "mean_error_by_stages_of_kind": {k: {n: round(statistics.fmean(v), 1) for n, v in sorted(d.items())}
                                         for k, d in by_kind.items()},
        "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
