"""Every figure the README quotes, re-made from the command line, with the command that made it.

    python bench/run_all.py [--tasks deblur,derain,denoise] [--out bench/results] [--readme README.md]

Steps (each a real ``ens`` command or bench script run as a subprocess, so nothing here is special):

1. per task, ``ens search`` on the default data and preset with table-predicted latency, on the prebuilt
   zoo that ships with ens (the searches run in ``<out>/run``, which holds no ``zoo/``); the first one is
   the README's first command, timed from an empty cache (its latency table included: every cache of
   the run lives in ``<out>/cache``, through ``ENS_CACHE_DIR``);
2. per task, the ``--candidates`` trials within 0.3 dB of the teacher that the table ranks fastest, each timed
   with the all-transformer network at 256x256 by ``ens profile`` (interleaved rounds); the fastest measured
   one and its speed-up (figure (a)); in the same rounds each candidate's ``onnx_int8`` graph (``ens profile
   --precision int8``: the graph ``ens finalize --export onnx_int8`` ships, random weights), the fastest one's
   speed-up over the FP32 all-T network (figure (b)); and the zoo report's rank tau (figure (c)); the same
   candidates scored again on the whole held-out images (``ens search --whole-check``'s
   ``ens.search.whole_check``): figure (a) again, counting only those that stay within 0.3 dB there;
3. search throughput: trials per minute with 1 and 2 Ray workers on the deblur zoo (the table exists);
4. ``ens finalize`` to ``onnx_int8`` of the INT8 winner of figure (b) (``--finalize-task``: by default the task
   whose teacher gains most over its degraded input, since a recovery ratio means little where FP32 barely beats
   the input; ``all`` finalizes every task, side by side): INT8 PSNR and recovery (QDR and plain PTQ), and the
   INT8 graph's speed-up over its own FP32 export;
5. ``bench/bench_scan.py``: selective-scan speed-up and error;
6. ``ens calibrate --verify``: latency-table accuracy.

Prints one JSON object, kept as ``<out>/run_all.json`` too: saved after each step, so a failed or interrupted
run keeps what it measured (with ``incomplete``: why). With ``--readme`` it rewrites the table between the README's
``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENS = [sys.executable, "-m", "ens.cli"]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
PAPER_SPEEDUP = {"deblur": "3.4x", "derain": "1.74x", "denoise": "1.17x"}
PAPER_INT8_SPEEDUP = {"deblur": "≥ 5x (issue)"}


def run(cmd: list[str], log: list[dict[str, Any]], capture: bool = True, cwd: Path = ROOT) -> tuple[str, float]:
    """Run a command (argument list), return (stdout, wall seconds); a failure stops the benchmark."""
    shown = " ".join(shlex.quote(c) for c in (["ens", *cmd[3:]] if cmd[:3] == ENS else cmd))
    print(f"$ {shown}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, text=True, stdout=subprocess.PIPE if capture else sys.stderr)
    wall = time.monotonic() - t0
    log.append({"command": shown, "wall_s": round(wall, 1), "rc": res.returncode})
    if res.returncode != 0:
        raise SystemExit(f"run_all: command failed ({res.returncode}): {shown}")
    return (res.stdout or ""), wall


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def trials_per_minute(storage: Path, study_name: str) -> dict[str, Any]:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}")
    done = [t for t in study.trials if t.state.is_finished() and t.datetime_complete is not None
            and "duplicate_of" not in t.user_attrs]
    if len(done) < 2:
        return {"trials": len(done), "trials_per_min": None}
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    minutes = (end - start).total_seconds() / 60
    return {"trials": len(done), "minutes": round(minutes, 2), "trials_per_min": round(len(done) / minutes, 1)}


def study_attrs(storage: Path, study_name: str, all_t: str) -> tuple[dict[str, Any], float]:
    """The study's user attrs and the PSNR of its all-transformer trial (the teacher, in the trials' metric)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}")
    ref = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("arch") == all_t]
    return study.user_attrs, float(ref[0].user_attrs["psnr"])


def front_span(storage: Path, study_name: str) -> dict[str, Any]:
    """PSNR span of the Pareto front (PSNR up, latency down) of the study's completed trials."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}")
    front = [t.user_attrs["psnr"] for t in study.best_trials]
    return {"front_size": len(front), "psnr_min": round(min(front), 3), "psnr_max": round(max(front), 3),
            "span_db": round(max(front) - min(front), 3)}


def within(storage: Path, study_name: str, k: int, margin: float = 0.3) -> list[dict[str, Any]]:
    """The ``k`` completed trials within ``margin`` dB of the all-T trial that the study's latency ranks fastest,
    one per architecture (``ens search --time-finalists``'s choice: ``ens.search.finalists.pick_finalists``)."""
    import optuna

    from ens.search.finalists import pick_finalists

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}")
    return [{"trial": t.number, "arch": t.user_attrs["arch"], "psnr": round(t.user_attrs["psnr"], 3),
             "predicted_ms": round(t.user_attrs["latency"], 2)} for t in pick_finalists(study, k, margin)[1]]


def whole_check(storage: Path, study_name: str, k: int, margin: float = 0.3) -> dict[str, Any]:
    """``within``'s candidates and all-T scored on the zoo's whole held-out images (``ens search --whole-check``)."""
    import optuna

    from ens.search.whole_check import STUDY_ATTR, check_on_whole_images
    from ens.tasks import get_task
    from ens.zoo.build import held_out_images
    from ens.zoo.store import Zoo

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}")
    task = get_task(study.user_attrs["task"])
    check_on_whole_images(study, k, margin, Zoo.load(study.user_attrs["zoo_dir"]), task,
                          held_out_images(task, None, 8), log=lambda _s: None)
    return study.user_attrs[STUDY_ATTR]


def whole_image_speedup(r: dict[str, Any]) -> dict[str, Any] | None:
    """Figure (a) counting only the candidates within the target on whole images: the fastest measured of them."""
    sp, wc = r.get("speedup"), r.get("whole_check")
    if not sp or not wc or not wc.get("rows"):
        return None
    ms = sp.get("candidates_ms", {})
    held = [row for row in wc["rows"] if row["within_target"] and row["arch"] in ms]
    out: dict[str, Any] = {"held": len(held), "checked": len(wc["rows"]),
                           "losses_db": [row["whole_loss_db"] for row in wc["rows"]]}
    if held:
        best = min(held, key=lambda row: ms[row["arch"]])
        out |= {"arch": best["arch"], "arch_ms": ms[best["arch"]], "whole_loss_db": best["whole_loss_db"],
                "speedup": round(sp["all_t_ms"] / ms[best["arch"]], 2)}
    return out


def measured_speedup(cands: list[dict[str, Any]], ref: str, shape: str, log: list, rounds: int,
                     int8: bool = True) -> dict[str, Any]:
    """Median ort-cpu latency of all-T (FP32) and of each candidate, FP32 and (``int8``) as the ``onnx_int8`` graph
    finalize ships, measured in alternating rounds so drift hits them alike; the fastest measured candidate wins
    in each precision (a table's ranking of near ties is noisy)."""
    archs = [ref, *dict.fromkeys(c["arch"] for c in cands)]
    runs = [(a, "fp32") for a in archs] + ([(a, "int8") for a in archs[1:]] if int8 else [])
    times: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
    cmds = {}
    for _ in range(rounds):
        for a, prec in runs:
            cmd = [*ENS, "profile", "--arch", a, "--profiler", "ort-cpu", "--shape", shape, "--no-cache", "--json"]
            out, _ = run(cmd + (["--precision", "int8"] if prec == "int8" else []), log)
            times[(a, prec)].append(last_json(out)["median_ms"])
            cmds[(a, prec)] = log[-1]["command"]
    med = {r: sorted(v)[len(v) // 2] for r, v in times.items()}
    win = min(cands, key=lambda c: med[(c["arch"], "fp32")])
    res = {"best": win, "arch_ms": round(med[(win["arch"], "fp32")], 2), "all_t_ms": round(med[(ref, "fp32")], 2),
           "speedup": round(med[(ref, "fp32")] / med[(win["arch"], "fp32")], 2),
           "commands": [cmds[(ref, "fp32")], cmds[(win["arch"], "fp32")]],
           "candidates_ms": {a: round(med[(a, "fp32")], 2) for a in archs[1:]}, "rounds": rounds,
           "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    if int8:
        w8 = min(cands, key=lambda c: med[(c["arch"], "int8")])
        res["int8"] = {"best": w8, "int8_ms": round(med[(w8["arch"], "int8")], 2),
                       "speedup": round(med[(ref, "fp32")] / med[(w8["arch"], "int8")], 2),
                       "command": cmds[(w8["arch"], "int8")],
                       "candidates_ms": {a: round(med[(a, "int8")], 2) for a in archs[1:]}}
    return res


def search(task: str, out: Path, log: list, trials: int, workers: int, name: str,
           val: str = "patches") -> tuple[Path, float]:
    """``ens search`` as a user runs it first: no ``--zoo``, in a folder with no ``zoo/``: the prebuilt zoo;
    ``val``: what its trials are scored on (``--val``)."""
    cwd = out / "run"
    cwd.mkdir(parents=True, exist_ok=True)
    if (cwd / "zoo").exists():
        raise SystemExit(f"run_all: {cwd / 'zoo'} exists; remove it so that the searches use the prebuilt zoos")
    db = out / f"{name}.db"
    cmd = [*ENS, "search", "--task", task, "--objective", "psnr,latency", "--storage", str(db),
           "--trials", str(trials), "--workers", str(workers), "--study-name", name,
           *(["--val", val] if val != "patches" else [])]
    _, wall = run(cmd, log, capture=False, cwd=cwd)
    return db, wall


def finalize_tasks(tasks: dict[str, dict[str, Any]], wanted: str) -> list[str]:
    """The tasks named by ``--finalize-task``: a comma list, ``all``, or ``auto`` (the task whose teacher gains
    most over its degraded input: a recovery ratio means little where FP32 barely beats the input)."""
    if wanted == "all":
        return list(tasks)
    if wanted != "auto":
        names = [t for t in wanted.split(",") if t]
        bad = [t for t in names if t not in tasks]
        if bad:
            raise SystemExit(f"run_all: --finalize-task {','.join(bad)} is not among the tasks run "
                             f"({', '.join(tasks)})")
        return names
    gains = {t: r["teacher_psnr"] - r["input_psnr"] for t, r in tasks.items() if math.isfinite(r["input_psnr"])}
    return [max(gains, key=gains.__getitem__)] if gains else list(tasks)[:1]


def finalize_trial(r: dict[str, Any]) -> dict[str, Any] | None:
    """The trial to finalize: the INT8 winner of figure (b) where it was timed, else figure (a)'s winner."""
    return ((r.get("speedup") or {}).get("int8") or {}).get("best") or r.get("best")


def finalize_all(res: dict[str, Any], names: list[str], out: Path, log: list[dict[str, Any]]) -> None:
    """``ens finalize --export onnx_int8`` of each task's winner; several run side by side, one thread each
    (their INT8-vs-FP32 latency is a ratio timed inside each run, so it stays comparable)."""
    procs = []
    for task in names:
        fin = out / f"final-{task}"
        cmd = [*ENS, "finalize", str(out / f"{task}-tiny.db"), "--export", "onnx_int8", "--out", str(fin), "--force"]
        best = finalize_trial(res["tasks"][task])
        if best:
            cmd += ["--trial", str(best["trial"])]
        if len(names) > 1:
            cmd += ["--threads", "1"]
        shown = " ".join(shlex.quote(c) for c in ["ens", *cmd[3:]])
        print(f"$ {shown}", file=sys.stderr, flush=True)
        logf = (out / f"final-{task}.log").open("w")
        procs.append((task, fin, shown, logf, time.monotonic(), subprocess.Popen(cmd, cwd=ROOT, text=True,
                                                                                 stdout=logf, stderr=logf)))
    failed = []
    for task, fin, shown, logf, t0, proc in procs:
        rc = proc.wait()
        logf.close()
        log.append({"command": shown, "wall_s": round(time.monotonic() - t0, 1), "rc": rc})
        if rc != 0:
            failed.append(f"{shown} (rc {rc}, see {logf.name})")
            continue
        rep = json.loads((fin / "report.json").read_text())
        q, lat = rep["quality"], rep["latency"]["ort_cpu"]
        res["finalize"][task] = {
            "task": task, "trial": rep["trial"]["number"], "arch": rep["arch"], "command": shown,
            "fp32_psnr": q["fp32"]["psnr"], "int8_psnr": q["int8_qdr"]["psnr"],
            "qdr_recovery_pct": q["int8_qdr"]["recovery_pct"],
            "ptq_recovery_pct": q.get("int8_ptq", {}).get("recovery_pct"), "degraded_psnr": q["degraded"]["psnr"],
            "fp32_ms": lat["fp32"]["median_ms"], "int8_ms": lat["int8"]["median_ms"],
            "speedup": round(lat["fp32"]["median_ms"] / lat["int8"]["median_ms"], 2),
            "wall_s": rep.get("wall_time_s")}
    if failed:
        raise SystemExit("run_all: finalize failed: " + "; ".join(failed))


def _fix(row: str) -> str:
    """Commands in a Markdown table: ``|`` escaped (arch strings hold it), this checkout's path dropped."""
    return re.sub(r"`([^`]*)`", lambda m: "`" + m.group(1).replace(f"{ROOT}/", "").replace("|", "\\|") + "`", row)


def table(res: dict[str, Any]) -> str:
    rows = ["| figure | measured | paper | command |", "|---|---|---|---|"]
    for task, r in res.get("tasks", {}).items():
        sp = r.get("speedup")
        fig = (f"{sp['speedup']}x ({sp['all_t_ms']} → {sp['arch_ms']} ms; {r['best']['psnr']:.2f} dB vs teacher "
               f"{r['teacher_psnr']:.2f})" if sp
               else f"no trial within 0.3 dB of the teacher ({r['teacher_psnr']:.2f})")
        on = "whole held-out images" if r.get("val") == "whole" else "held-out patches"
        label = (f"fastest within 0.3 dB of the table's {len(r['candidates'])} fastest trials there ({on}), "
                 "measured" if r.get("candidates") else f"best Pareto trial within 0.3 dB ({on})")
        rows.append(f"| {task}: {label}, ort-cpu speed-up over all-T at 256² | {fig} | "
                    f"{PAPER_SPEEDUP.get(task, '')} | `{sp['commands'][1] if sp else r['search_command']}` |")
        wi = whole_image_speedup(r)
        if wi:
            fig = (f"{wi['speedup']}x ({sp['all_t_ms']} → {wi['arch_ms']} ms; `{wi['arch']}`, "
                   f"{wi['whole_loss_db']:.2f} dB below all-T there)" if wi["held"] else "none")
            rows.append(f"| {task}: the same, counting only the candidates within 0.3 dB of all-T on the whole "
                        f"held-out images ({wi['held']} of {wi['checked']}; their losses there "
                        f"{' / '.join(f'{v:.2f}' for v in wi['losses_db'])} dB) | {fig} | "
                        f"{PAPER_SPEEDUP.get(task, '')} | `ens search --whole-check {wi['checked']}` |")
        inp = r["input_psnr"]
        inp_s = f"{inp:.2f}" if math.isfinite(inp) else "inf (a held-out patch the rain missed; now redrawn)"
        if r.get("val") != "whole":  # else the same as the zoo report's row below
            rows.append(f"| {task}: teacher / degraded input PSNR (dB), held-out patches | {r['teacher_psnr']:.2f} / "
                        f"{inp_s} | | `{r['search_command']}` |")
        i8 = (sp or {}).get("int8")
        if i8:
            rows.append(f"| {task}: the same candidates as the `onnx_int8` graph finalize ships, fastest measured, "
                        f"speed-up over FP32 all-T (same rounds) | {i8['speedup']}x ({sp['all_t_ms']} → "
                        f"{i8['int8_ms']} ms; `{i8['best']['arch']}`, {i8['best']['psnr']:.2f} dB in FP32) | "
                        f"{PAPER_INT8_SPEEDUP.get(task, '')} | `{i8['command']}` |")
        rk = r.get("rank")
        if rk and rk.get("tau") is not None:
            rows.append(f"| {task}: rank fidelity, Kendall tau of zero-shot vs fine-tuned PSNR, {rk['n']} random "
                        f"hybrids, {rk['finetune_steps']} steps (zoo report) | {rk['tau']:+.2f} | ≥ 0.8 (issue) | "
                        f"`ens zoo show {task}-tiny` |")
        w = r.get("whole_images")
        if w:
            rows.append(f"| {task}: teacher / degraded input PSNR (dB), whole held-out images (zoo report) | "
                        f"{w['teacher_psnr']:.2f} / {w['input_psnr']:.2f} | | `python bench/bench_zoo.py` |")
    if "first_command" in res:
        fc = res["first_command"]
        span = f"; deblur front spans {fc['front']['span_db']:.2f} dB" if fc.get("front") else ""
        rows.append(f"| README first command, empty cache (prebuilt zoo + table + {fc['trials']} trials) | "
                    f"{fc['wall_s'] / 60:.1f} min{span} | ≤ 5 min | `{fc['command']}` |")
    for w, r in res.get("throughput", {}).items():
        rows.append(f"| search throughput, {w} worker(s), table latency | {r['trials_per_min']} trials/min | | "
                    f"`{r['command']}` |")
    fins = res.get("finalize") or {}
    if "qdr_recovery_pct" in fins:  # a record of one finalized task (before 2026-12-04)
        fins = {fins.get("task", ""): fins}
    for task, f in fins.items():
        on = f"{task}: " if task else ""
        teacher = res.get("tasks", {}).get(task, {}).get("teacher_psnr")
        vs = f", {f['int8_psnr'] - teacher:+.2f} dB vs the FP32 teacher" if teacher else ""
        rows.append(f"| {on}INT8 (QDR) PSNR recovery, ORT{', trial ' + str(f['trial']) if 'trial' in f else ''} | "
                    f"{f['qdr_recovery_pct']}% ({f['int8_psnr']:.2f} / {f['fp32_psnr']:.2f} dB{vs}) | 96.5% (QDR) | "
                    f"`{f['command']}` |")
        rows.append(f"| {on}INT8 plain PTQ recovery, ORT quantize_static | {f['ptq_recovery_pct']}% | | same |")
        rows.append(f"| {on}INT8 vs its own FP32 export, ort-cpu latency (inside finalize) | {f['int8_ms']:.1f} vs "
                    f"{f['fp32_ms']:.1f} ms ({f['speedup']}x) | | same |")
    s = res.get("scan")
    if s:
        rows.append(f"| selective scan, chunked vs sequential (1 thread) | {s['selective_scan_speedup']}x, max abs err "
                    f"{s['selective_scan_max_abs_err']:.1e} | | `{s['command']}` |")
        rows.append(f"| SSD scan, chunked vs sequential (1 thread) | {s['ssd_scan_speedup']}x, max abs err "
                    f"{s['ssd_scan_max_abs_err']:.1e} | | same |")
    lut = res.get("lut")
    if lut:
        extra = ""
        if lut.get("drift"):
            d = lut["drift"]
            extra += (f"; {100 * d['within_10pct']:.0f}% with the machine's drift since calibration "
                      f"({d['now_vs_calibration']:.2f}x) taken out")
        if lut.get("repeatability"):
            r = lut["repeatability"]
            extra += f"; the same file measured twice: {100 * r['within_10pct']:.0f}% within ±10%"
        rows.append(f"| latency table: share within ±10% on {lut['archs']} random archs | "
                    f"{100 * lut['within_10pct']:.0f}% (median error {lut['median_abs_error_pct']:.1f}%){extra} | | "
                    f"`{lut['command']}` |")
    return "\n".join(_fix(r) for r in rows)


def write_readme(readme: Path, res: dict[str, Any]) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"run_all: {readme} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {res['date']}"
    body = f"\n_Made by `python bench/run_all.py` on {machine}._\n\n{table(res)}\n"
    from ens.training import atomic_write_text

    atomic_write_text(readme, head + BEGIN + body + END + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="deblur,derain,denoise")
    ap.add_argument("--out", default="bench/results", help="work folder (studies, caches, final-TASK/)")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--throughput-trials", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of each speed-up measurement")
    ap.add_argument("--candidates", type=int, default=3, help="trials within 0.3 dB, fastest by the study's "
                    "latency, timed against all-T; the fastest measured is the task's figure")
    ap.add_argument("--shape", default="1x3x256x256")
    ap.add_argument("--val", default="patches", choices=("patches", "whole"), help="what the searches score "
                    "trials on (ens search --val): whole scores them on the whole held-out images, as the papers do "
                    "(about 10x the evaluation time), and makes the whole-image check redundant")
    ap.add_argument("--skip", default="", help="comma list of: finalize, int8 (the candidates' INT8 timings), "
                    "whole (their check on whole images), scan, lut, throughput")
    ap.add_argument("--finalize-task", default="auto",
                    help="tasks whose winners are finalized: a comma list, all, or auto (the largest teacher gain "
                    "over the input); several run side by side, one thread each")
    ap.add_argument("--readme", default=None, help="rewrite the table between the markers of this file")
    ap.add_argument("--from-json", default=None, help="only rewrite --readme from a JSON this script printed")
    args = ap.parse_args()
    if args.from_json:
        if not args.readme:
            raise SystemExit("run_all: --from-json needs --readme")
        write_readme(ROOT / args.readme, json.loads(Path(args.from_json).read_text()))
        return
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # latency tables and caches of this run only, so the first command is timed from nothing
    os.environ["ENS_CACHE_DIR"] = str(out / "cache")
    skip = set(filter(None, args.skip.split(",")))
    log: list[dict[str, Any]] = []
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "tasks": {}, "throughput": {}, "log": log,
                           "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    try:
        measure(args, out, skip, res)
    except BaseException as e:  # any failure or Ctrl-C: keep what was measured before it, and say why
        res["incomplete"] = f"{type(e).__name__}: {e}" if not isinstance(e, SystemExit) else str(e)
        raise
    finally:
        res["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        save(res, out)
    print(json.dumps(res, indent=1, default=str))
    if args.readme:
        write_readme(ROOT / args.readme, res)


def save(res: dict[str, Any], out: Path) -> None:
    """``res`` as ``<out>/run_all.json``, written whole or not at all (after each step, and on a failure)."""
    from ens.training import atomic_write_text

    atomic_write_text(out / "run_all.json", json.dumps(res, indent=1, default=str))


def measure(args: argparse.Namespace, out: Path, skip: set[str], res: dict[str, Any]) -> None:
    """The steps of the module docstring, filling ``res`` (saved to ``<out>/run_all.json`` after each)."""
    log = res["log"]
    all_t = "enc:T,T,T|lat:T|dec:T,T,T|ref:T"

    for i, task in enumerate(filter(None, args.tasks.split(","))):
        fresh = not (out / f"{task}-tiny.db").exists() and not any((out / "cache").rglob("*.json"))
        db, wall = search(task, out, log, args.trials, 1, f"{task}-tiny", args.val)  # a re-run resumes
        cmd = log[-1]["command"]
        timing = out / "first_command.json"
        if i == 0 and fresh:  # only a run from an empty cache times the README's first command
            timing.write_text(json.dumps({"command": cmd, "wall_s": round(wall, 1), "trials": args.trials,
                                          "front": front_span(db, f"{task}-tiny")}))
        if i == 0 and timing.is_file():
            res["first_command"] = json.loads(timing.read_text())
        attrs, teacher_psnr = study_attrs(db, f"{task}-tiny", all_t)
        quality = json.loads((Path(attrs["zoo_dir"]) / "quality.json").read_text())
        r: dict[str, Any] = {"search_command": cmd, "teacher_psnr": teacher_psnr, "val": attrs.get("val", "patches"),
                             "input_psnr": quality["patch_check"]["input_psnr"], "zoo_id": attrs["zoo_id"],
                             "zoo_origin": attrs.get("zoo_origin"), "front": front_span(db, f"{task}-tiny"),
                             "whole_images": {"input_psnr": quality["input"]["psnr"],
                                              "teacher_psnr": quality["teacher"]["psnr"]},
                             "rank": {k: v for k, v in (quality.get("rank") or {}).items() if k != "archs"}}
        r["candidates"] = within(db, f"{task}-tiny", args.candidates)
        r["best"] = None
        if r["candidates"]:
            r["speedup"] = measured_speedup(r["candidates"], all_t, args.shape, log, args.rounds,
                                            int8="int8" not in skip)
            r["best"] = r["speedup"]["best"]
            if "whole" not in skip and args.val != "whole":  # with --val whole the candidates already are
                r["whole_check"] = whole_check(db, f"{task}-tiny", args.candidates)
        res["tasks"][task] = r
        save(res, out)

    first = next(iter(res["tasks"]), None)
    if "throughput" not in skip and first:
        for w in (1, 2):
            name = f"{first}-throughput-w{w}"
            (out / f"{name}.db").unlink(missing_ok=True)
            search(first, out, log, args.throughput_trials, w, name)
            res["throughput"][str(w)] = {**trials_per_minute(out / f"{name}.db", name), "command": log[-1]["command"]}
        save(res, out)

    fin_tasks = finalize_tasks(res["tasks"], args.finalize_task)
    if "finalize" not in skip and fin_tasks:
        res["finalize"] = {}
        finalize_all(res, fin_tasks, out, log)
        save(res, out)

    if "scan" not in skip:
        outp, _ = run([sys.executable, "bench/bench_scan.py", "--threads", "1"], log)
        res["scan"] = {**last_json(outp), "command": "python bench/bench_scan.py --threads 1"}

    if "lut" not in skip:
        cmd = [*ENS, "calibrate", "--profiler", "ort-cpu", "--shape", args.shape, "--verify", "20", "--json"]
        outp, _ = run(cmd, log)
        res["lut"] = {**last_json(outp), "command": log[-1]["command"]}


if __name__ == "__main__":
    main()
