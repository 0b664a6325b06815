"""What a user sees in optuna-dashboard after a search: screenshots of a real browser on a tiny study.

    python bench/bench_dashboard.py                          # prebuilt deblur zoo, lut:ort-cpu at 64 px, 5 trials
    python bench/bench_dashboard.py --profiler proxy --trials 4
    python bench/bench_dashboard.py --record bench/records/bench_dashboard-trial-DATE.png

Runs ``run_search`` into ``OUT/study.db`` (a latency table, when the profiler needs one, is calibrated
into ``OUT/cache``, never into the user's cache), starts ``ens dashboard`` on 127.0.0.1 on a free port
in a subprocess, and takes screenshots with headless Chromium (``apt-get install chromium``) of the
study page (Pareto plot, objective names) and of one trial's page (values, Note, sample image). Prints
one JSON object: the screenshots' paths, the URLs, the study's metric names and the trial's note.
``--record PATH`` also keeps the trial page, palette-quantized to stay small, at PATH. Look at the
screenshots: the JSON says what the study holds, not what the page shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def search(out: Path, profiler: str, trials: int, shape: str) -> dict[str, Any]:
    """A tiny study in ``out/study.db``; what it holds that the screenshots should show."""
    import optuna
    from optuna_dashboard import get_note

    from ens.search.driver import SearchOptions, run_search

    db = out / "study.db"
    t0 = time.monotonic()
    study, summary = run_search(SearchOptions(task="deblur", objective="psnr,latency", profiler=profiler,
                                              trials=trials, workers=0, storage=str(db), shape=shape,
                                              sampler="random"), log=lambda m: print(m, file=sys.stderr))
    best = max((t for t in study.best_trials if "duplicate_of" not in t.user_attrs), key=lambda t: t.values[0])
    return {"db": str(db), "search_s": round(time.monotonic() - t0, 1), "evaluated": summary.evaluated,
            "metric_names": study.metric_names, "trial": best.number,
            "note": get_note(optuna.trial.Trial(study, best._trial_id)),
            "sample_png_bytes": (Path(study.user_attrs["artifact_dir"]) /
                                 best.user_attrs["artifacts"]["sample.png"]).stat().st_size}


def serve(db: str, port: int) -> subprocess.Popen:
    """``ens dashboard`` in a subprocess, once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "ens.cli", "dashboard", db, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"ens dashboard did not answer on port {port} within 60 s")


def study_id(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
        return int(json.load(r)["study_summaries"][0]["study_id"])


def screenshot(browser: str, url: str, path: Path, size: str) -> Path:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={path}", f"--window-size={size}", "--virtual-time-budget=10000", url],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    return path


def record(src: Path, dst: Path, max_kb: int = 300) -> int:
    """``src`` as a 256-colour PNG at ``dst`` (shrunk by a quarter until it is under ``max_kb``); its bytes."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    while True:
        img.quantize(colors=256).save(dst, format="PNG", optimize=True)
        if dst.stat().st_size <= max_kb * 1024 or img.width < 400:
            return dst.stat().st_size
        img = img.resize((img.width * 3 // 4, img.height * 3 // 4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiler", default="lut:ort-cpu")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--shape", default="1x3x64x64", help="latency input shape (small: a quick table)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard")
    ap.add_argument("--record", type=Path, default=None, help="keep the trial page here (under 300 KB)")
    ap.add_argument("--trial-height", type=int, default=2200, help="window height for the trial page")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("no Chromium: apt-get install -y chromium")
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    os.environ["ENS_CACHE_DIR"] = str(args.out / "cache")
    held = search(args.out, args.profiler, args.trials, args.shape)
    port = free_port()
    proc = serve(held["db"], port)
    try:
        sid = study_id(port)
        base = f"http://127.0.0.1:{port}/dashboard/studies/{sid}"
        urls = {"study": base, "trial": f"{base}/trials?numbers={held['trial']}"}
        shots = {"study": screenshot(browser, urls["study"], args.out / "study.png", "1400,1000"),
                 "trial": screenshot(browser, urls["trial"], args.out / "trial.png", "1400,1000"),
                 "trial_full": screenshot(browser, urls["trial"], args.out / "trial-full.png",
                                          f"1400,{args.trial_height}")}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {"profiler": args.profiler, "shape": args.shape, "urls": urls,
              "screenshots": {k: str(v) for k, v in shots.items()}, **held}
    if args.record is not None:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        result["record"] = {"path": str(args.record), "bytes": record(shots["trial_full"], args.record)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
