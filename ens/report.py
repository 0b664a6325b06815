"""``ens report``: tables of all trials and of the Pareto front, a Pareto plot, speed-ups.

Reads only the study's storage (trial user attrs), as the dashboard and ``finalize`` do.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from ens.errors import EnsError
from ens.search.objectives import latency_label
from profilers.result import MEASURED
from search_spaces.arch import Arch

ALL_T = str(Arch.uniform("T"))
COLUMNS = ["number", "arch", "psnr", "ssim", "latency_ms", "speedup", "params", "macs", "transformer_count",
           "profiler", "latency_unit", "latency_source", "feasible"]


def load_study(storage: str | Path, study_name: str | None = None) -> optuna.Study:
    from studies.storage import open_storage, redact

    st = open_storage(storage, must_exist=True)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    shown = redact(str(storage))
    if not names:
        raise EnsError(f"{shown} holds no study")
    if study_name is None:
        if len(names) > 1:
            raise EnsError(f"{shown} holds several studies ({', '.join(names)}): pass --study-name")
        study_name = names[0]
    elif study_name not in names:
        raise EnsError(f"no study {study_name!r} in {shown} (it has: {', '.join(names)})")
    return optuna.load_study(study_name=study_name, storage=st)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per evaluated, complete trial (duplicates dropped), with the speed-up over all-T."""
    rows: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if "duplicate_of" in a or "arch" not in a:
            continue
        rows.append({
            "number": t.number,
            "arch": a["arch"],
            "psnr": a.get("psnr"),
            "ssim": a.get("ssim"),
            "latency_ms": a.get("latency"),
            "params": a.get("params"),
            "macs": a.get("macs"),
            "transformer_count": a.get("transformer_count"),
            "profiler": a.get("latency_profiler"),
            "latency_unit": a.get("latency_unit", "ms"),
            "latency_source": a.get("latency_source", MEASURED),
            "latency_label": a.get("latency_label"),
            "latency_error_pct": a.get("latency_error_pct"),
            "feasible": a.get("feasible", True),
            "values": list(t.values),
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    ref = df.loc[df["arch"] == ALL_T, "latency_ms"]
    df["speedup"] = (float(ref.iloc[0]) / df["latency_ms"]) if len(ref) and ref.notna().all() else float("nan")
    return df.sort_values("number").reset_index(drop=True)


def pareto_frame(study: optuna.Study, df: pd.DataFrame | None = None) -> pd.DataFrame:
    df = trials_frame(study) if df is None else df
    if df.empty:
        return df
    directions = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    feasible = df[df["feasible"].fillna(True).astype(bool)]
    keep = []
    for i, row in feasible.iterrows():
        v = row["values"]
        dominated = False
        for _, other in feasible.iterrows():
            w = other["values"]
            if w is v:
                continue
            ge = all((b >= a) if mx else (b <= a) for a, b, mx in zip(v, w, directions, strict=True))
            gt = any((b > a) if mx else (b < a) for a, b, mx in zip(v, w, directions, strict=True))
            if ge and gt:
                dominated = True
                break
        if not dominated:
            keep.append(i)
    out = feasible.loc[keep]
    return out.sort_values("latency_ms" if out["latency_ms"].notna().any() else "number").reset_index(drop=True)


def latency_axis_label(df: pd.DataFrame) -> str:
    """What the latency numbers of ``df`` (:func:`trials_frame`) are: measured on which profiler, or predicted
    by which table with what measured error, or the proxy's count; each way, joined, if trials differ."""
    labels = list(dict.fromkeys(_latency_label(r) for r in df.to_dict("records")))
    return "; ".join(labels) if labels else "latency (ms)"


def _latency_label(row: dict[str, Any]) -> str:
    if isinstance(row.get("latency_label"), str) and row["latency_label"]:
        return row["latency_label"]
    err = row.get("latency_error_pct")  # studies searched before trials recorded their label
    return latency_label(str(row.get("profiler") or "an unknown profiler"), str(row.get("latency_source") or MEASURED),
                         str(row.get("latency_unit") or "ms"),
                         float(err) if isinstance(err, (int, float)) and math.isfinite(err) else None)


def pareto_plot(df: pd.DataFrame, front: pd.DataFrame, title: str, fmt: str, quality_on: str | None = None) -> bytes:
    """Trials and the Pareto front, PSNR against latency; ``quality_on``: what the PSNR was measured on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    x = "latency_ms" if df["latency_ms"].notna().any() else "transformer_count"
    ax.scatter(df[x], df["psnr"], s=18, c="#9aa5b1", label="trials")
    ax.plot(front[x], front["psnr"], "o-", c="#d64545", ms=5, label="Pareto front")
    ref = df[df["arch"] == ALL_T]
    if len(ref):
        ax.scatter(ref[x], ref["psnr"], marker="*", s=220, c="#1f4e79", label="all-transformer (teacher)", zorder=5)
    ax.set_xlabel(latency_axis_label(df) if x == "latency_ms" else "transformer blocks")
    ax.set_ylabel(f"PSNR (dB, {quality_on})" if quality_on else "PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    return buf.getvalue()


def single_swaps_frame(record: Any) -> pd.DataFrame | None:
    """Block position x kind table of the study's ``single_swaps`` (``ens search --zoo-front``), or None."""
    if not isinstance(record, dict) or not isinstance(record.get("delta_psnr"), dict) or not record["delta_psnr"]:
        return None
    frame = pd.DataFrame.from_dict(record["delta_psnr"], orient="index")
    frame.index.name = "block"
    return frame


def front_rounds_frame(record: Any) -> pd.DataFrame | None:
    """One row per round of the zoo front (``zoo_front_rounds``): the network its swaps were taken around, or
    None."""
    if not isinstance(record, list) or not record or not all(isinstance(r, dict) for r in record):
        return None
    frame = pd.DataFrame(record).rename(columns={"base": "around", "base_loss_db": "loss (dB)",
                                                 "base_latency_ms": "latency (ms, table)",
                                                 "scored": "networks scored"})
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="round")
    return frame


def finalists_frame(record: Any) -> pd.DataFrame | None:
    """The finalists ``ens search --time-finalists`` timed beside all-T (study attr ``finalists``), or None."""
    if not isinstance(record, dict) or not record.get("rows"):
        return None
    frame = pd.DataFrame(record["rows"]).rename(columns={
        "psnr": "PSNR (dB)", "loss_db": "loss (dB)", "study_ms": "study latency (ms)", "measured_ms": "measured (ms)",
        "speedup": "measured speed-up"})
    return frame.sort_values("measured speed-up", ascending=False, ignore_index=True)


def whole_check_frame(record: Any) -> pd.DataFrame | None:
    """The picks ``ens search --whole-check`` scored on whole held-out images (study attr ``whole_check``), or None."""
    if not isinstance(record, dict) or not record.get("rows"):
        return None
    return pd.DataFrame(record["rows"]).rename(columns={
        "patch_loss_db": "loss on patches (dB)", "whole_psnr": "PSNR whole (dB)",
        "whole_loss_db": "loss on whole images (dB)", "within_target": "within target"})


def write_report(study: optuna.Study, out: Path) -> dict[str, Any]:
    """Writes trials.csv/.md, pareto.csv/.md, pareto.png/.html and summary.json into ``out`` (and
    single_swaps.md, finalists.md and whole_images.md when the study has them)."""

    df = trials_frame(study)
    if df.empty:
        raise EnsError(f"study {study.study_name!r} has no completed trial to report")
    front = pareto_frame(study, df)
    try:
        return _write_report_files(study, df, front, out)
    except OSError as exc:
        raise EnsError(f"cannot write the report into {out}: {exc.strerror or exc}") from None


def _write_report_files(study: optuna.Study, df: pd.DataFrame, front: pd.DataFrame, out: Path) -> dict[str, Any]:
    from ens.training import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    cols = [c for c in COLUMNS if c in df.columns]
    atomic_write_text(out / "trials.csv", df[cols].to_csv(index=False))
    atomic_write_text(out / "pareto.csv", front[cols].to_csv(index=False))
    atomic_write_text(out / "trials.md", df[cols].to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_text(out / "pareto.md", front[cols].to_markdown(index=False, floatfmt=".4g") + "\n")
    title = f"{study.study_name}: {len(df)} architectures, {len(front)} on the Pareto front"
    on = study.user_attrs.get("val_label")  # what the trials' PSNR was measured on (studies since --val)
    (out / "pareto.png").write_bytes(pareto_plot(df, front, title, "png", on))
    svg = pareto_plot(df, front, title, "svg", on).decode()
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1>{svg}<h2>Pareto front</h2>"
            f"{front[cols].to_html(index=False, float_format=lambda v: f'{v:.4g}')}"
            f"<h2>All trials</h2>{df[cols].to_html(index=False, float_format=lambda v: f'{v:.4g}')}")
    swaps = single_swaps_frame(study.user_attrs.get("single_swaps"))
    if swaps is not None:  # what each slot costs in quality, as the zoo front priced it
        text = (f"PSNR change (dB) when one block of the teacher is swapped, on the {on or 'held-out patches'}:\n\n"
                + swaps.to_markdown(floatfmt="+.3f") + "\n")
        page += f"<h2>Single swaps (dB against the teacher)</h2>{swaps.to_html(float_format=lambda v: f'{v:+.3f}')}"
        rounds = front_rounds_frame(study.user_attrs.get("zoo_front_rounds"))
        if rounds is not None:
            md = rounds.assign(around=rounds["around"].str.replace("|", "\\|", regex=False))  # Markdown cells
            text += ("\nRounds of the zoo front (each scores the single swaps around the fastest network "
                     "measured so far within the target):\n\n" + md.to_markdown(floatfmt=".4g") + "\n")
            page += f"<h2>Rounds of the zoo front</h2>{rounds.to_html(float_format=lambda v: f'{v:.4g}')}"
        atomic_write_text(out / "single_swaps.md", text)
    fin = study.user_attrs.get("finalists")
    finalists = finalists_frame(fin)
    if finalists is not None:  # the table's ranking checked by measurement; the first row is --pick finalist
        head = (f"Finalists within {fin['target_db']:g} dB of all-T, timed interleaved beside all-T "
                f"({fin['all_t_ms']:.1f} ms) on {fin['profiler']}, {fin['precision']}, {fin['batches']} batch(es); "
                "`ens finalize --pick finalist` takes the first row")
        md = finalists.assign(arch=finalists["arch"].str.replace("|", "\\|", regex=False))
        atomic_write_text(out / "finalists.md", head + ":\n\n" + md.to_markdown(index=False, floatfmt=".4g") + "\n")
        page += (f"<h2>Finalists, measured</h2><p>{html.escape(head)}</p>"
                 f"{finalists.to_html(index=False, float_format=lambda v: f'{v:.4g}')}")
    wc = study.user_attrs.get("whole_check")
    whole = whole_check_frame(wc)
    if whole is not None:  # the patch score's picks, checked on the images the papers evaluate on
        head = (f"The fastest trials within {wc['target_db']:g} dB of all-T on the held-out patches, scored on "
                f"{wc['images']} whole held-out image(s) (all-T {wc['all_t_psnr']:.2f} dB there)")
        md = whole.assign(arch=whole["arch"].str.replace("|", "\\|", regex=False))
        atomic_write_text(out / "whole_images.md", head + ":\n\n" + md.to_markdown(index=False, floatfmt=".4g") + "\n")
        page += (f"<h2>Checked on whole images</h2><p>{html.escape(head)}</p>"
                 f"{whole.to_html(index=False, float_format=lambda v: f'{v:.4g}')}")
    atomic_write_text(out / "pareto.html", page)
    summary = {"study": study.study_name, "trials": len(df), "latency": latency_axis_label(df),
               "pareto": front[cols].to_dict(orient="records"),
               "all_transformer": df[df["arch"] == ALL_T][cols].to_dict(orient="records"),
               **({"finalists": finalists.to_dict(orient="records")} if finalists is not None else {}),
               **({"whole_images": whole.to_dict(orient="records")} if whole is not None else {}),
               "files": ["trials.csv", "trials.md", "pareto.csv", "pareto.md", "pareto.png", "pareto.html",
                         "summary.json", *(["single_swaps.md"] if swaps is not None else []),
                         *(["finalists.md"] if finalists is not None else []),
                         *(["whole_images.md"] if whole is not None else [])]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary
