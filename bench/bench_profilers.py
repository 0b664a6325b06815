"""Profiler benchmark: ort-cpu repeatability and latency-table (LUT) accuracy. Prints one JSON object.

    python bench/bench_profilers.py                       # tiny preset, 1x3x256x256, 50 archs
    python bench/bench_profilers.py --n 10 --shape 1x3x64x64 --profilers ort-cpu

1. Repeatability: for each profiler spec, the same model (all-transformer network) is measured
   ``--repeats`` times, each an independent ``measure()`` (warm-up + runs); the coefficient of
   variation of the medians is reported, with the within-measurement CV.
2. LUT accuracy: the calibration networks (skeleton, one per kind, one per stage and kind) and
   ``--n`` seeded random architectures are exported once; for each profiler spec the calibration
   networks are measured (interleaved) and tables fitted (on each network's median, and on its
   fastest run), then the ``--n`` architectures are measured (interleaved, with the uniform
   networks again as drift anchors) and compared with the tables' predictions. Reported per
   statistic: share within +-10% and +-5%, median/mean/max absolute error, rank correlation, the
   machine's drift between calibration and verification (anchors now / anchors then) and the
   share within +-10% once that drift is divided out; and the time of calibration (its exports +
   measurements) against measuring all ``--n`` architectures (their exports + measurements).

Progress goes to stderr; stdout is the JSON only. Never run by pytest.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STATS = ("median", "min")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--shape", default="1x3x256x256")
    ap.add_argument("--n", type=int, default=50, help="random architectures to verify the table on")
    ap.add_argument("--kinds", default=None, help="block kinds (default: every kind that builds)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profilers", default="ort-cpu,ort-cpu?threads=1&clock=cpu",
                    help="comma-separated ort-cpu specs to benchmark")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import onnxruntime
    import torch

    from ens.profiling import export_arch, parse_kinds, random_archs, resolve_config
    from profilers.base import parse_shape
    from profilers.lut import export_calibration_networks, statistic_of, table_from_results
    from profilers.registry import get_profiler

    torch.set_num_threads(2)
    cfg = resolve_config(args.preset)
    shape = parse_shape(args.shape)
    kinds = parse_kinds(args.kinds)
    specs = [s.strip() for s in args.profilers.split(",") if s.strip()]
    profilers = [get_profiler(s) for s in specs]
    for p in profilers:
        p.check()
    out: dict = {
        "bench": "profilers",
        "preset": args.preset,
        "shape": list(shape),
        "kinds": kinds,
        "n_archs": args.n,
        "seed": args.seed,
        "machine": {"cpu": profilers[0].device.split(" / ")[0], "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        "profilers": {},
    }
    with tempfile.TemporaryDirectory(prefix="ens-bench-prof-") as tmp:
        tmp = Path(tmp)
        log(f"exporting calibration networks for kinds {kinds}")
        t0 = time.perf_counter()
        calib_paths = export_calibration_networks(cfg, kinds, shape, tmp / "calib")
        export_calib_s = time.perf_counter() - t0
        archs = random_archs(args.n, cfg, kinds, seed=args.seed)
        log(f"exporting {len(archs)} random architectures")
        t0 = time.perf_counter()
        arch_paths = [export_arch(a, cfg, shape, tmp / "archs" / f"{a.hash}.onnx") for a in archs]
        export_archs_s = time.perf_counter() - t0
        out["export_s"] = {"calibration_networks": export_calib_s, "archs": export_archs_s,
                           "calibration_networks_count": len(calib_paths)}
        ref = calib_paths["uniform:T"] if "uniform:T" in calib_paths else next(iter(calib_paths.values()))

        for spec, prof in zip(specs, profilers, strict=True):
            res: dict = {"device": prof.device}
            # 1. repeatability
            log(f"{spec}: {args.repeats} repeats of {ref.stem}")
            meds, cvs = [], []
            for _ in range(args.repeats):
                r = prof.measure(ref, shape)
                meds.append(r.median_ms)
                cvs.append(r.details["cv"])
            m = np.asarray(meds)
            res["repeatability"] = {
                "model": ref.stem,
                "medians_ms": [round(v, 3) for v in meds],
                "cv_of_medians": float(m.std(ddof=1) / m.mean()),
                "max_over_min": float(m.max() / m.min()),
                "within_run_cv_mean": float(np.mean(cvs)),
                "runs_per_measure": r.runs,
            }
            # 2. LUT: calibrate, then measure the archs (plus the uniform networks again, as drift anchors)
            log(f"{spec}: measuring {len(calib_paths)} calibration networks")
            t0 = time.perf_counter()
            measured = prof.measure_many(list(calib_paths.values()), shape)
            calib_measure_s = time.perf_counter() - t0
            calib_results = dict(zip(calib_paths, measured, strict=True))
            anchors = [n for n in calib_paths if n.startswith("uniform:")]
            log(f"{spec}: measuring {len(arch_paths)} architectures (+{len(anchors)} anchors)")
            t0 = time.perf_counter()
            results = prof.measure_many(arch_paths + [calib_paths[n] for n in anchors], shape)
            archs_measure_s = time.perf_counter() - t0
            anchor_results, results = results[len(arch_paths):], results[: len(arch_paths)]
            calibration_s = export_calib_s + calib_measure_s
            measure_all_s = export_archs_s + archs_measure_s
            res["lut"] = {
                "calibration_networks": len(calib_paths),
                "calibration_s": calibration_s,
                "calibration_measure_s": calib_measure_s,
                "measure_all_s": measure_all_s,
                "measure_all_measure_s": archs_measure_s,
                "calibration_vs_measure_all": calibration_s / measure_all_s,
            }
            for stat in STATS:
                table = table_from_results(prof, cfg, shape, kinds, calib_results, "fp32", calibration_s,
                                           args.preset, statistic=stat)
                # how much the machine drifted between calibration and verification, on the same networks
                drift = float(np.median([statistic_of(now, stat) / statistic_of(calib_results[n], stat)
                                         for n, now in zip(anchors, anchor_results, strict=True)]))
                rows = []
                for a, r in zip(archs, results, strict=True):
                    pred, got = table.predict(a.block_kinds(cfg)), statistic_of(r, stat)
                    rows.append({"arch": str(a), "measured_ms": round(got, 3), "predicted_ms": round(pred, 3),
                                 "error_pct": round(100.0 * (pred - got) / got, 2)})
                e = np.asarray([x["error_pct"] for x in rows])
                meas = np.asarray([x["measured_ms"] for x in rows])
                pred = np.asarray([x["predicted_ms"] for x in rows])
                e_drift = 100.0 * (pred * drift - meas) / meas
                rank = np.corrcoef(np.argsort(np.argsort(meas)), np.argsort(np.argsort(pred)))[0, 1]
                res["lut"][stat] = {
                    "within_10pct": float(np.mean(np.abs(e) <= 10)),
                    "within_5pct": float(np.mean(np.abs(e) <= 5)),
                    "median_abs_error_pct": float(np.median(np.abs(e))),
                    "mean_abs_error_pct": float(np.mean(np.abs(e))),
                    "max_abs_error_pct": float(np.max(np.abs(e))),
                    "mean_error_pct": float(np.mean(e)),
                    "spearman_rank_corr": float(rank),
                    "machine_drift_since_calibration": drift,
                    "within_10pct_drift_corrected": float(np.mean(np.abs(e_drift) <= 10)),
                    "skeleton_ms": table.skeleton_ms,
                    "scales": table.scales,
                    "costs_ms": {s_: {k: round(v, 3) for k, v in c.items()} for s_, c in table.costs.items()},
                    "worst": sorted(rows, key=lambda x: -abs(x["error_pct"]))[:3],
                }
                log(f"{spec} [{stat}]: within 10% = {res['lut'][stat]['within_10pct']:.2f}, "
                    f"median |err| = {res['lut'][stat]['median_abs_error_pct']:.1f}%, drift {drift:.3f}")
            out["profilers"][spec] = res
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
