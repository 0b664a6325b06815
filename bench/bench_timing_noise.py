"""Is this machine's timing noise per session or in time? Two sessions of each of two ONNX files, kept open,
run in turn for many rounds (one run each per round).

    python bench/bench_timing_noise.py A.onnx B.onnx [--rounds 25] [--threads 2] [--spin 1]

If the slow runs of different files come in the same rounds (a high correlation between A's and B's times),
the noise is the machine's, in time (other jobs, the host), and only short alternating visits share it fairly;
if one session of a file stays slower than the other, it is per session. Prints one JSON object: per round the
times, per session the median and minimum, the correlations, the per-round ratio B/A, and the load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort


def session(path: str, threads: int, spin: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    return {inp.name: np.random.default_rng(0).random([int(d) for d in inp.shape], dtype=np.float32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spin", type=int, default=1)
    args = ap.parse_args()
    load0 = os.getloadavg()
    names = ["a1", "b1", "a2", "b2"]
    sessions = {n: session(args.a if n[0] == "a" else args.b, args.threads, bool(args.spin)) for n in names}
    feeds = {n: feed(s) for n, s in sessions.items()}
    for n, s in sessions.items():
        for _ in range(3):
            s.run(None, feeds[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[n])
            times[n].append(1e3 * (time.perf_counter() - t0))
    t = {n: np.array(v) for n, v in times.items()}
    ratio = t["b1"] / t["a1"]
    print(json.dumps({
        "files": {"a": args.a, "b": args.b}, "threads": args.threads, "spin": bool(args.spin), "rounds": args.rounds,
        "per_session": {n: {"median_ms": round(float(np.median(v)), 2), "min_ms": round(float(v.min()), 2)}
                        for n, v in t.items()},
        "corr_a_b_same_round": round(float(np.corrcoef(t["a1"], t["b1"])[0, 1]), 2),
        "corr_b1_b2_same_round": round(float(np.corrcoef(t["b1"], t["b2"])[0, 1]), 2),
        "ratio_b_over_a": {"median": round(float(np.median(ratio)), 3), "min": round(float(ratio.min()), 3),
                           "max": round(float(ratio.max()), 3)},
        "slowest_over_fastest_run_a": round(float(t["a1"].max() / t["a1"].min()), 2),
        "times_ms": {n: [round(x, 1) for x in v] for n, v in times.items()},
        "load_average": {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()]},
    }))


if __name__ == "__main__":
    main()
