"""``report.json``, the model card (``MODEL_CARD.md``) and the sample images of a finalized model."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ens.training import atomic_write_text
from profilers.result import is_time

REPORT_JSON = "report.json"
MODEL_CARD = "MODEL_CARD.md"
SAMPLES_PNG = "samples.png"


def recovery(int8: float | None, fp32: float | None) -> float | None:
    """INT8 PSNR as a percentage of FP32 PSNR (QDR's "recovers 96.5% of FP32")."""
    if int8 is None or fp32 is None or not fp32:
        return None
    return round(100.0 * int8 / fp32, 3)


def gain_recovery(int8: float | None, fp32: float | None, degraded: float | None) -> float | None:
    """Share of the FP32 model's gain over the degraded input that INT8 keeps, in % (None without a gain)."""
    if None in (int8, fp32, degraded) or fp32 <= degraded:
        return None
    return round(100.0 * (int8 - degraded) / (fp32 - degraded), 2)


def quality_entry(q: Any, fp32_psnr: float | None = None, degraded: float | None = None) -> dict[str, Any]:
    """A :class:`ens.evaluate.Quality` as report fields, with its recovery of ``fp32_psnr`` when given."""
    d = q.to_dict()
    if fp32_psnr is not None:
        d["recovery_pct"] = recovery(d["psnr"], fp32_psnr)
        d["gain_recovery_pct"] = gain_recovery(d["psnr"], fp32_psnr, degraded)
    return d


@torch.no_grad()
def samples_png(rows: list[tuple[torch.Tensor, ...]]) -> bytes:
    """One row per sample: degraded | FP32 | INT8 | target (each [3, H, W] in [0, 1]), 2 px gaps."""
    from PIL import Image

    lines = []
    for row in rows:
        tiles = [t.clamp(0, 1) for t in row]
        gap = torch.ones(3, tiles[0].shape[1], 2)
        parts = []
        for i, t in enumerate(tiles):
            parts.append(t)
            if i < len(tiles) - 1:
                parts.append(gap)
        lines.append(torch.cat(parts, dim=2))
        lines.append(torch.ones(3, 2, lines[-1].shape[2]))
    img = torch.cat(lines[:-1], dim=1)
    arr = (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _f(v: Any, fmt: str = ".2f", unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:{fmt}}{unit}"


def _lat(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    med = d.get("median_ms")
    unit = " ms" if is_time(d) else ""
    return _f(med, ".2f", unit)


def _cell(text: Any) -> str:
    """Table-safe Markdown: an arch string's ``|`` would split the cell."""
    return str(text).replace("|", "\\|")


def _delta(v: dict[str, Any], fp: dict[str, Any]) -> str:
    if v.get("psnr") is None or fp.get("psnr") is None:
        return ""
    return f"{v['psnr'] - fp['psnr']:+.3f}"


def model_card(r: dict[str, Any]) -> str:
    """The Markdown model card of a report dict."""
    lines = [
        f"# {r['task']} restoration model: {r['arch']}",
        "",
        f"Finalized from trial {r['trial']['number']} of study `{r['study']}` (picked by {r['trial']['how']}), "
        f"zoo `{r['zoo_id']}`, preset `{r['preset']}`. Export target: `{r['export']['target']}`.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{_cell(r['arch'])}` |",
        f"| parameters | {r['params']:,} |",
        f"| MACs at {r['shape_str']} | {r['macs']:,} |",
        f"| input shape (deployed files) | {r['shape_str']} |",
    ]
    sections = (_card_whole_images, _card_quality, _card_latency, _card_quantization, _card_training, _card_ablation,
                _card_files)
    for section in sections:
        lines += section(r)
    return "\n".join(lines) + "\n"


def _card_quality(r: dict[str, Any]) -> list[str]:
    q = r.get("quality", {})
    fp, i8, ptq, deg = q.get("fp32") or {}, q.get("int8_qdr") or {}, q.get("int8_ptq") or {}, q.get("degraded") or {}
    lines = [
        "",
        f"## Quality on held-out patches ({q.get('pairs', '?')} patches of {q.get('patch_size', '?')} px, "
        f"{q.get('metric', '')})",
        "",
        "| model | PSNR (dB) | SSIM | vs FP32 (dB) | recovery of FP32 PSNR | run by |",
        "|---|---|---|---|---|---|",
        f"| degraded input | {_f(deg.get('psnr'))} | {_f(deg.get('ssim'), '.4f')} | {_delta(deg, fp)} | | |",
        f"| FP32 (fine-tuned) | {_f(fp.get('psnr'))} | {_f(fp.get('ssim'), '.4f')} | | 100% | PyTorch |",
    ]
    if i8:
        lines.append(f"| INT8, QDR (QAT + distillation) | {_f(i8.get('psnr'))} | {_f(i8.get('ssim'), '.4f')} | "
                     f"{_delta(i8, fp)} | {_f(i8.get('recovery_pct'), '.2f', '%')} | ONNX Runtime, `model_int8` Q/DQ |")
    if ptq:
        lines.append(f"| INT8, plain PTQ (ORT quantize_static) | {_f(ptq.get('psnr'))} | "
                     f"{_f(ptq.get('ssim'), '.4f')} | {_delta(ptq, fp)} | "
                     f"{_f(ptq.get('recovery_pct'), '.2f', '%')} | ONNX Runtime |")
    if q.get("int8_runtime"):
        lines += ["", f"INT8 files run by: {q['int8_runtime']}."]
    if i8 and i8.get("gain_recovery_pct") is not None:
        lines += ["", f"INT8 keeps {_f(i8.get('gain_recovery_pct'), '.1f', '%')} of the FP32 model's gain over the "
                  f"degraded input (PTQ: {_f(ptq.get('gain_recovery_pct'), '.1f', '%')})."]
    elif fp.get("psnr") is not None and deg.get("psnr") is not None and fp["psnr"] <= deg["psnr"]:
        lines += ["", f"**Warning:** the FP32 model does not improve on the degraded input "
                  f"({fp['psnr'] - deg['psnr']:+.2f} dB): train the zoo or fine-tune longer; recovery figures "
                  "say little here."]
    return lines


def _card_whole_images(r: dict[str, Any]) -> list[str]:
    w = r.get("quality", {}).get("whole_images")
    if not w:
        return []
    fp, deg = w.get("fp32_onnx") or {}, w.get("degraded") or {}
    tile = "x".join(str(t) for t in w.get("tile", []))
    sizes = ", ".join("x".join(str(s) for s in hw) for hw in w.get("sizes", []))
    lines = [
        "",
        f"## Quality on whole held-out images ({w.get('images')}: {sizes})",
        "",
        f"Each ONNX file as shipped, run by ONNX Runtime on overlapping {tile} tiles ({w.get('overlap')} px "
        "overlap, averaged); the FP32 network also untiled in PyTorch.",
        "",
        "| model | PSNR (dB) | SSIM | vs FP32 (dB) | recovery of FP32 PSNR |",
        "|---|---|---|---|---|",
        f"| degraded input | {_f(deg.get('psnr'))} | {_f(deg.get('ssim'), '.4f')} | {_delta(deg, fp)} | |",
        f"| FP32 `model_fp32.onnx` | {_f(fp.get('psnr'))} | {_f(fp.get('ssim'), '.4f')} | | 100% |",
    ]
    rows = (("fp32_torch_untiled", "FP32, PyTorch, untiled"), ("int8_qdr", "INT8 QDR `model_int8.onnx`"),
            ("int8_ptq", "INT8, plain PTQ of `model_fp32.onnx`"))
    for key, label in rows:
        v = w.get(key)
        if v:
            lines.append(f"| {label} | {_f(v.get('psnr'))} | {_f(v.get('ssim'), '.4f')} | {_delta(v, fp)} | "
                         f"{_f(v.get('recovery_pct'), '.2f', '%')} |")
    if w.get("qdr_minus_ptq_db") is not None:
        lines += ["", f"QDR over plain PTQ on whole images: {w['qdr_minus_ptq_db']:+.3f} dB."]
    levels = w.get("levels") or {}
    if levels:
        lines += ["", f"The figures above are the mean over {len(levels)} degradation levels, each on the same images:",
                  "", "| level | degraded | FP32 | INT8 QDR | INT8 PTQ | QDR − PTQ (dB) |", "|---|---|---|---|---|---|"]
        for name, v in levels.items():
            cells = [_f((v.get(k) or {}).get("psnr")) for k in ("degraded", "fp32_onnx", "int8_qdr", "int8_ptq")]
            lines.append(f"| {name} | {' | '.join(cells)} | {_f(v.get('qdr_minus_ptq_db'), '+.3f')} |")
    return lines


def _card_latency(r: dict[str, Any]) -> list[str]:
    lines = ["", "## Latency", "", "| profiler | device | shape | FP32 | INT8 | speed-up |",
             "|---|---|---|---|---|---|"]
    notes = []
    for d in r.get("latency", {}).values():
        if not isinstance(d, dict) or "fp32" not in d:
            continue
        sp = d.get("speedup")
        lines.append(f"| {d.get('profiler')} | {d.get('device', '')} | {d.get('shape')} | {_lat(d.get('fp32'))} | "
                     f"{_lat(d.get('int8'))} | {_f(sp, '.2f', 'x')} |")
        if d.get("cpu_int8"):
            notes.append(f"- {d['profiler']}: the CPU is {d['cpu_int8']}.")
        if d.get("note"):
            notes.append(f"- {d['profiler']}: {d['note']}")
        if d.get("int8_time_shares"):
            notes.append(f"- {d['profiler']}: {time_shares_line(d['int8_time_shares'])}")
    return lines + (["", *notes] if notes else [])


def time_shares_line(t: dict[str, Any]) -> str:
    """Where the INT8 graph's kernel time goes, in one line."""
    tops = ", ".join(f"{o['op']} {o['pct']:.0f}%" for o in t.get("top_float_ops", [])[:5]) or "none"
    moved = t.get("eight_bit_movement_pct") or 0
    movement = f"; {moved:.0f}% of it moving 8-bit data" if moved >= 0.5 else ""
    return (f"INT8 kernel time (ORT profiler, separate pass): {t['integer_pct']:.0f}% in integer kernels "
            f"({', '.join(t.get('integer_ops') or []) or 'none'}{movement}), {t['qdq_pct']:.0f}% in Q/DQ conversions, "
            f"{t['float_pct']:.0f}% in float ops (largest: {tops})")


def _card_quantization(r: dict[str, Any]) -> list[str]:
    qz = r.get("quantization")
    if not qz:
        return []
    lines = ["", "## Quantization", "", f"- tool: {qz.get('tool')}; scheme: {qz.get('scheme')}",
             f"- INT8 layers: {qz.get('quantized_layers')}; layers kept in floating point by choice: "
             f"{', '.join(qz.get('float_layers') or []) or 'none'}",
             f"- INT8 compute ops in the ONNX graph: {_ops(qz.get('ops', {}).get('int8'))}",
             f"- floating-point compute ops (higher precision): {_ops(qz.get('ops', {}).get('float'))}",
             *_conv_kernels_line(qz),
             *([f"- {qz['weight_bits']}-bit weights: {qz.get('weight_bits_note', '')}"] if qz.get("weight_bits")
               else []),
             f"- {qz.get('higher_precision_note', '')}"]
    chk = r.get("checks", {})
    if chk:
        i8c = chk.get("int8_vs_fakequant", {})
        lines.append(f"- checks: FP32 ONNX vs PyTorch max abs {_f(chk.get('fp32_onnx_max_abs'), '.2e')}; "
                     f"INT8 ORT vs fake-quant PyTorch rmse {_f(i8c.get('rmse'), '.2e')}, "
                     f"max {_f(i8c.get('max_abs'), '.2e')}")
    return lines


def _card_training(r: dict[str, Any]) -> list[str]:
    t = r.get("training")
    if not t:
        return []
    return ["", "## Training", "",
            f"- FP32 fine-tuning: {t['finetune'].get('steps')} steps, {t['finetune'].get('seconds')} s",
            *_card_selection(t["finetune"].get("extra", {}).get("selection"), "FP32"),
            f"- QAT: {t.get('qat', {}).get('steps')} steps, {t.get('qat', {}).get('seconds')} s; "
            f"loss: {t.get('loss_formula')}",
            f"- LMR: {t.get('lmr_formula')}; final multipliers {_weights(t.get('qat', {}).get('lmr_weights'))}",
            *_card_selection(t.get("qat", {}).get("extra", {}).get("selection"), "QAT"),
            f"- options: {json.dumps(t.get('config', {}))}"]


def _card_selection(sel: dict[str, Any] | None, what: str) -> list[str]:
    """The fine-tuning or QAT state kept and what chose it (training images only)."""
    if not sel or sel.get("picked_step") is None:
        return []
    n = sel.get("images", 0)
    on = (f"{n} whole training image{'s' if n != 1 else ''}" if sel.get("by") == "whole"
          else f"{sel.get('pool_patches')} training-image patches")
    scores = ", ".join(f"{k}: {v:.2f}" for k, v in sel["psnr_by_step"].items())
    return [f"- {what} state kept: step {sel['picked_step']}, the best PSNR on {on} among the checks (step: dB) "
            f"{scores}"]


def _card_ablation(r: dict[str, Any]) -> list[str]:
    ab = r.get("ablation")
    if not ab:
        return []
    fp = r.get("quality", {}).get("fp32") or {}
    lines = ["", "## Ablation (same QAT step budget; INT8 run by ONNX Runtime)", "",
             "| variant | what | INT8 PSNR | INT8 SSIM | vs FP32 (dB) | recovery |", "|---|---|---|---|---|---|"]
    for name, v in ab.items():
        lines.append(f"| {name} | {v.get('description', '')} | {_f(v.get('psnr'), '.3f')} | "
                     f"{_f(v.get('ssim'), '.4f')} | {_delta(v, fp)} | {_f(v.get('recovery_pct'), '.2f', '%')} |")
    return lines


def _card_files(r: dict[str, Any]) -> list[str]:
    ex = r.get("export", {})
    lines = ["", "## Files", ""]
    for f in ex.get("files", []):
        lines.append(f"- `{f['file']}` ({f['bytes']:,} bytes, sha256 {f['sha256'][:16]}...)")
    eng = ex.get("engine")
    if eng:
        lines.append(f"- TensorRT engine: {'built (' + eng['method'] + ')' if eng['built'] else 'NOT built'}; "
                     f"build command: `{eng['command']}`" + (f" ({eng['message']})" if eng.get("message") else ""))
    if ex.get("qnn"):
        lines.append(f"- QNN: {json.dumps(ex['qnn'])}")
    if (r.get("files") or {}).get("samples"):
        lines += ["", "## Samples", "", "degraded | FP32 | INT8 | target", "", f"![samples]({SAMPLES_PNG})"]
    return lines


def _weights(w: dict[str, float] | None) -> str:
    return "n/a" if not w else ", ".join(f"{k} {v:.4g}" for k, v in w.items())


def _ops(d: dict[str, int] | None) -> str:
    if not d:
        return "none"
    return ", ".join(f"{k} x{v}" for k, v in d.items())


def write_report(out: Path, report: dict[str, Any], samples: bytes | None = None) -> None:
    if samples is not None:
        (out / SAMPLES_PNG).write_bytes(samples)
        report.setdefault("files", {})["samples"] = SAMPLES_PNG
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2, default=_json_default) + "\n")
    atomic_write_text(out / MODEL_CARD, model_card(report))


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)


def _conv_kernels_line(qz: dict) -> list[str]:
    k = qz.get("ort_cpu_convs")
    if not k:
        return []
    lines = [f"- ONNX Runtime CPU runs {k.get('int8')} convolutions as QLinearConv (INT8) and {k.get('float')} in "
             f"floating point (placement: {qz.get('placement')}; activations {qz.get('activation_type')})"]
    ints = qz.get("ort_cpu_integer_kernels")
    if ints:
        lines.append("- its integer kernels: " + ", ".join(f"{op} x{n}" for op, n in ints.items()))
    return lines
