"""``ens finalize``: QDR quantization-aware distillation of a Pareto trial, INT8 export and report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ens.cli.app import AMP_HELP, app, console, log_line
from ens.finalize.targets import target_names

_EXPORTS = ", ".join(target_names())


@app.command()
def finalize(
    storage: str = typer.Argument(..., help="The study: a SQLite file (study.db) or an Optuna storage URL."),
    export: str = typer.Option(..., "--export", help=f"What to ship: {_EXPORTS}."),
    out: Path = typer.Option(Path("final"), "--out", help="Output folder (written atomically)."),
    trial: int | None = typer.Option(None, "--trial", help="Finalize this trial number."),
    latency_budget: float | None = typer.Option(None, "--latency-budget",
                                                help="Best-PSNR Pareto trial within this latency (ms)."),
    pick: str | None = typer.Option(None, "--pick", help="'knee' of the Pareto front (the default), or "
                                    "'finalist': the fastest timed by ens search --time-finalists."),
    study_name: str | None = typer.Option(None, help="Study in the storage (needed if it holds several)."),
    finetune_steps: int = typer.Option(200, min=0, help="End-to-end FP32 fine-tuning steps."),
    qat_steps: int = typer.Option(600, min=0, help="Quantization-aware training steps."),
    batch_size: int = typer.Option(8, min=1, help="Patches per training step."),
    lr: float = typer.Option(2e-4, help="FP32 fine-tuning learning rate (cosine schedule)."),
    qat_lr: float = typer.Option(5e-5, help="QAT learning rate (cosine schedule)."),
    kd: str = typer.Option("latent", help="Distillation: latent (QDR's decoder-free, at the bottleneck), "
                           "output, or none."),
    lmr: bool = typer.Option(True, "--lmr/--no-lmr", help="Learnable magnitude reweighting of the losses."),
    dct_weight: float = typer.Option(0.0, help="Weight of the DCT-domain L1 term (INT8-SR uses 0.02)."),
    conf_kd: bool = typer.Option(False, "--conf-kd", help="Add confidence-weighted output KD (INT8-SR)."),
    spark: bool = typer.Option(False, "--spark", help="Add SPARK's spatial KD policy (trained by RL, discarded)."),
    weight_clip: float = typer.Option(2.0, help="Clip weights to +-this during QAT (0: off)."),
    observer_freeze: float = typer.Option(0.3, help="Fraction of QAT steps after which activation ranges freeze."),
    fakequant_freeze: float = typer.Option(0.9, help="Fraction of QAT steps after which weight scales freeze."),
    keep_fp: list[str] = typer.Option([], "--keep-fp", help="Module-name pattern kept in float (repeatable), "
                                      "e.g. '*x_proj'."),
    placement: str = typer.Option("auto", "--placement", help="Where activations are quantized: trt (conv inputs, "
                                  "as TensorRT wants), ort (conv outputs too, with U8 activations for onnx_int8, so "
                                  "ONNX Runtime fuses QLinearConv), or auto (ort for onnx_int8, else trt)."),
    weight_bits: str = typer.Option("auto", "--weight-bits", help="INT8 weight range: 8, 7 (values in [-64, 64]) or "
                                    "auto (7 for onnx_int8 where this CPU's ONNX Runtime INT8 kernels saturate: x86 "
                                    "without VNNI; else 8)."),
    ablate: bool = typer.Option(False, "--ablate", help="Also run the QAT variants (no KD, KD at the output, "
                                "no LMR) with the same step budget and report each."),
    zoo: Path | None = typer.Option(None, "--zoo", help="Zoo folder (default: the one the study recorded)."),
    data: str | None = typer.Option(None, "--data", help="Dataset folder (default: the study's data)."),
    profiler: str | None = typer.Option(None, "--profiler", help="Latency profiler (default: the study's; "
                                        "ONNX Runtime CPU is always measured too)."),
    shape: str | None = typer.Option(None, "--shape", help="Input shape of the deployed files (default: the "
                                     "study's latency shape)."),
    train_patches: int = typer.Option(512, min=1, help="Training patches drawn for fine-tuning and QAT."),
    patch_size: int | None = typer.Option(None, "--patch-size", min=8, help="Size of the training patches "
                                          "(fine-tuning, QAT and its checkpoint selection; a multiple of 8). "
                                          "Default: the zoo's. The held-out patches keep the zoo's size."),
    resample_every: int = typer.Option(64, min=0, help="Draw a fresh pool of --train-patches (new crops and "
                                       "degradations) every N steps of the FP32 fine-tuning (0: one fixed pool)."),
    qat_resample_every: int = typer.Option(0, min=0, help="The same during QAT (0: one fixed pool)."),
    select_every: int = typer.Option(100, min=0, help="Score the network every N steps of FP32 fine-tuning and of "
                                     "QAT (and each one's start) and keep the best (0: keep the last step)."),
    select_by: str = typer.Option("whole", "--select-by", help="What the checks score: whole (PSNR on the first "
                                  "4 whole training images, centres of at most 512 px) or patches (PSNR on 128 "
                                  "training-image patches drawn apart from the training pool). Never the held-out "
                                  "split."),
    eval_images: int = typer.Option(8, min=0, help="Also score the shipped files on the first N whole held-out "
                                    "images, tiled at their input shape (0: held-out patches only)."),
    init: Path | None = typer.Option(None, "--init", help="Start from these FP32 weights (a previous run's "
                                     "model_fp32.safetensors) instead of the zoo's."),
    trt_host: str | None = typer.Option(None, "--trt-host", help="Build the engine over SSH: ssh://user@host."),
    hub_device: str | None = typer.Option(None, "--hub-device", help="AI Hub device for qnn_int8, e.g. "
                                          "'Snapdragon 8 Elite QRD' (default: the study's, else a Snapdragon "
                                          "8 Gen 3 phone)."),
    device: str = typer.Option("auto", "--device", help="Where fine-tuning and QAT train: auto (CUDA when "
                               "available), cpu, cuda or cuda:N. (An AI Hub device name here still works for "
                               "qnn_int8, with a note: use --hub-device.)"),
    amp: str = typer.Option("auto", "--amp", help=AMP_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the network for fine-tuning and QAT "
                                 "(off by default: it pays only on long runs, and not on every GPU)."),
    threads: int = typer.Option(2, min=1, help="ONNX Runtime threads for evaluation and latency."),
    latency_clock: str = typer.Option("wall", help="ORT CPU latency clock: wall, or cpu (stable on busy machines)."),
    seed: int = typer.Option(0, min=0, help="Seed of the training batches."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Fine-tune a Pareto trial, QAT it with QDR distillation, export INT8 and write a report."""
    from ens.errors import EnsError
    from ens.finalize.pipeline import FinalizeOptions, run_finalize
    from ens.finalize.qat import QDRConfig

    device, hub_device = split_device(device, hub_device, export)
    if weight_bits not in ("auto", "7", "8"):
        raise EnsError(f"--weight-bits must be 8, 7 or auto, got {weight_bits!r}")
    cfg = QDRConfig(finetune_steps=finetune_steps, qat_steps=qat_steps, batch_size=batch_size, lr=lr,
                    qat_lr=qat_lr, dct_weight=dct_weight, resample_every=resample_every,
                    qat_resample_every=qat_resample_every, select_every=select_every, select_by=select_by,
                    kd=kd, lmr=lmr, conf_kd=conf_kd, spark=spark,
                    weight_clip=weight_clip or None, observer_freeze=observer_freeze,
                    fakequant_freeze=fakequant_freeze, keep_fp=tuple(keep_fp), placement=placement,
                    weight_bits=None if weight_bits == "auto" else int(weight_bits), seed=seed)
    opts = FinalizeOptions(storage=storage, export=export, out=str(out), study_name=study_name, trial=trial,
                           latency_budget=latency_budget, pick=pick, qdr=cfg, ablate=ablate,
                           zoo=str(zoo) if zoo else None, data=data, profiler=profiler, shape=shape,
                           train_patches=train_patches, patch_size=patch_size, eval_images=eval_images, force=force,
                           init_weights=str(init) if init else None, trt_host=trt_host, qnn_device=hub_device,
                           threads=threads, latency_clock=latency_clock, device=device, amp=amp, compile=compile)
    res = run_finalize(opts, log=log_line)
    _print_summary(res.report, res.out)


def split_device(device: str, hub_device: str | None, export: str) -> tuple[str, str | None]:
    """``--device`` names where training runs. Before ``--hub-device`` it named the AI Hub device of qnn_int8:
    such a value (not auto/cpu/cuda[:N]) with ``--export qnn_int8`` is still taken as the hub device, with a
    one-line note."""
    text = device.strip().lower()
    if text in ("auto", "cpu", "cuda") or text.startswith("cuda:"):
        return device, hub_device
    if export == "qnn_int8" and hub_device is None:
        log_line(f"note: --device {device!r} as the AI Hub device is deprecated: use --hub-device (--device now "
                 "names where training runs: auto, cpu, cuda or cuda:N)")
        return "auto", device
    from ens.errors import EnsError

    raise EnsError(f"--device {device}: expected auto, cpu, cuda or cuda:N (the AI Hub device is --hub-device)")


def _print_summary(r: dict, out: Path) -> None:
    q = r.get("quality", {})
    t = Table(title=f"finalized: {r.get('arch')} (trial {r.get('trial', {}).get('number')})")
    for c in ("model", "PSNR", "SSIM", "recovery"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for key, label in (("degraded", "degraded input"), ("fp32", "FP32"), ("int8_qdr", "INT8 QDR (ORT)"),
                       ("int8_ptq", "INT8 PTQ (ORT)")):
        v = q.get(key)
        if v:
            rec = v.get("recovery_pct")
            t.add_row(label, f"{v['psnr']:.2f}", f"{v['ssim']:.4f}", f"{rec:.2f}%" if rec is not None else "")
    console.print(t)
    whole = q.get("whole_images")
    if whole:
        from ens.finalize.whole_images import whole_image_line

        log_line(whole_image_line(whole))
    lat = r.get("latency", {}).get("ort_cpu", {})
    if lat.get("fp32"):
        i8 = lat.get("int8", {}).get("median_ms")
        console.print(f"ONNX Runtime CPU latency at {lat.get('shape')}: FP32 {lat['fp32']['median_ms']:.1f} ms"
                      + (f", INT8 {i8:.1f} ms ({lat.get('speedup')}x)" if i8 else ""), highlight=False)
    log_line(f"report: {out / 'report.json'}, model card: {out / 'MODEL_CARD.md'}")
