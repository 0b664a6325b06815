"""``ens finalize``: pick a Pareto trial, fine-tune it in FP32, QDR quantization-aware training, INT8 export, report.

Steps (:func:`run_finalize`):

1. checks that fail fast, before any training: the export target, the output folder, ModelOpt (INT8
   targets), the AI Hub token (``qnn_int8``), the latency profiler;
2. the trial (:mod:`ens.finalize.pick`), its network rebuilt from the study's zoo, fine-tuned end to
   end in FP32 (``finetune_steps``), the checked state kept that scores best (as QAT's, below);
3. QDR QAT (:mod:`ens.finalize.qat`): a fake-quant copy distilled from the fine-tuned FP32 model, the
   state kept that scores best on whole training images (``select_by="whole"``; or on training-image
   patches drawn apart from the training pool), checked every ``select_every`` steps, the calibrated start
   included; with ``ablate``, the variants of :data:`ens.finalize.qat.ABLATIONS` with the same step budget;
4. exports (:mod:`ens.finalize.export`): FP32 and Q/DQ INT8 ONNX at the deploy shape, each checked
   against PyTorch; quality of FP32 (PyTorch), INT8 and plain PTQ (both run by ONNX Runtime) on the
   held-out patches at the zoo's patch size (a quick check) and, by the shipped files tiled at their
   input shape, on the whole held-out images (:mod:`ens.finalize.whole_images`); latencies; the TensorRT
   engine or the QNN model;
5. ``report.json``, ``MODEL_CARD.md``, ``samples.png``.

Everything is written into a temporary folder beside ``out`` that is renamed into place at the end:
``out`` is complete or absent (a failure removes the temporary folder). The one exception by design:
``trt_int8`` where no TensorRT is reachable commits the folder (ONNX, report and ``build_engine.sh``
with the exact trtexec command) and then raises :class:`~ens.finalize.export.EngineNotBuilt`
(exit status 3), since the files are what the user needs to build the engine elsewhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ens.errors import EnsError
from ens.finalize import export as ex
from ens.finalize.pick import Picked, pick_trial
from ens.finalize.qat import (
    ABLATIONS,
    QDRConfig,
    Selection,
    finetune_fp32,
    qdr_train,
    require_modelopt,
)
from ens.finalize.report import quality_entry, samples_png, write_report
from ens.finalize.targets import ExportTarget, get_target

# the selection pool's seed is the run's seed plus this, apart from every pool the training draws
SELECT_SEED_OFFSET = 1_000_003
SELECT_SIDE = 512  # px: whole training images that choose the fine-tuning and QAT states are cropped to this
LOSS_FORMULA = ("L_rec = Charbonnier(S(x), y) + w_dct * |DCT(S(x)) - DCT(y)|_1; "
                "L_kd = |lat_S - lat_T|_1 at the bottleneck (T = the fine-tuned FP32 model)")
LMR_FORMULA = "L = sum_i exp(-s_i) * L_i + s_i, s_i learnable, initialised to log L_i of the first batch"
_FLOAT_ISLANDS = (
    "the SSM scan of M blocks (softplus of dt, exp of A and of the decay segment sums, cumsum, the chunk "
    "matmuls), the attention of T blocks (L2 normalise, q.k^T and attn.v matmuls, softmax), every LayerNorm, "
    "GELU/SiLU")
HIGHER_PRECISION_NOTE = {
    "trt": "Only convolutions are INT8 (per-channel weights, per-tensor inputs). Kept in floating point (FP32 in "
           f"ONNX Runtime, FP16 in a TensorRT --int8 --fp16 engine): {_FLOAT_ISLANDS}, the residual sums, and the "
           "simple gates and sigmoid gates of E blocks' LDG.",
    "ort": "INT8: the convolutions (all but the final one), the residual sums, E blocks' simple gates, LDG "
           "sigmoid and gate, and the U-Net's skip joins (QLinearConv / Add / Mul / Sigmoid / Concat in ONNX "
           f"Runtime). Kept in floating point: {_FLOAT_ISLANDS}, the LDG's ReLU, the final convolution and the "
           "global residual (output + input).",
}
INT8_RUNTIME = {
    True: "ONNX Runtime CPU with all graph optimizations: the fused integer kernels onnx_int8 is deployed with",
    False: "ONNX Runtime CPU with QDQ fusion off (basic optimizations): every Q/DQ runs as written, the integer "
           "arithmetic of the target's INT8 engine (32-bit accumulation)",
}
WEIGHT_BITS_NOTE = {
    8: "weights use the full INT8 range",
    7: "weights use half the INT8 range ([-64, 64], the 8-bit grid at twice the step): ONNX Runtime's u8 x s8 "
       "kernels on x86 CPUs without VNNI, such as this one, add pairs of products in 16 bits and would saturate on "
       "full-range weights (--weight-bits 8 for a CPU with VNNI); the PTQ baseline uses quantize_static's "
       "reduce_range for the same reason",
}
PLACEMENT_TEXT = {
    "trt": "conv inputs, TensorRT's placement",
    "ort": "conv inputs and outputs except the final conv's, and the output of every residual sum, gate product, "
           "LDG sigmoid and skip join (whose inputs arrive quantized; layer scales folded into the conv before the "
           "sums), so ONNX Runtime fuses QLinearConv, QLinearAdd, QLinearMul, QLinearSigmoid and QLinearConcat",
}
ABLATION_TEXT = {
    "no_kd": "QAT, reconstruction loss only",
    "kd_output": "KD at the output instead of the bottleneck, LMR",
    "no_lmr": "bottleneck KD, fixed weights 1:1 (no LMR)",
    "qdr": "full QDR: bottleneck KD + LMR",
}


@dataclass
class FinalizeOptions:
    storage: str
    export: str = "onnx_int8"
    out: str = "final"
    study_name: str | None = None
    trial: int | None = None
    latency_budget: float | None = None
    pick: str | None = None
    qdr: QDRConfig = field(default_factory=QDRConfig)
    ablate: bool = False
    zoo: str | None = None
    data: str | None = None
    profiler: str | None = None
    shape: str | None = None
    train_patches: int = 512
    patch_size: int | None = None  # training patches' size (fine-tuning, QAT, selection); None: the zoo's
    calib_patches: int = 32
    eval_images: int = 8  # whole held-out images scored by the shipped files (0: patches only)
    samples: int = 3
    threads: int = 2
    latency_rounds: int = 5
    latency_runs: int = 10
    latency_clock: str = "wall"
    force: bool = False
    init_weights: str | None = None
    trt_host: str | None = None
    qnn_device: str | None = None  # the AI Hub device (--hub-device)
    device: str = "auto"  # where fine-tuning and QAT train (--device)
    amp: str = "auto"
    compile: bool = False
    show_progress: bool = True


@dataclass
class FinalizeResult:
    out: Path
    report: dict[str, Any]
    models: dict[str, Any] = field(default_factory=dict)  # "fp32": the fine-tuned net, "int8": the fake-quant one


# -- helpers ------------------------------------------------------------------------------------
def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EnsError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise EnsError(f"--out {out} already holds files: pass --force to replace it, or choose another folder")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise EnsError(f"the parent folder of --out ({parent}) does not exist")
    if not os.access(parent, os.W_OK):
        raise EnsError(f"cannot write into {parent}")


def _data_dir(opts: FinalizeOptions, attrs: dict[str, Any]) -> str | None:
    if opts.data:
        if not Path(opts.data).is_dir():
            raise EnsError(f"data directory {opts.data} does not exist")
        return opts.data
    d = attrs.get("data")
    return None if (d is None or str(d).startswith("embedded")) else str(d)


def _shape(opts: FinalizeOptions, attrs: dict[str, Any]) -> tuple[int, ...]:
    from ens.profiling import image_shape

    if opts.shape:
        return image_shape(opts.shape)
    s = attrs.get("shape")
    return image_shape(s) if s else (1, 3, 256, 256)


def _latency_profiler(opts: FinalizeOptions, study_profiler: str | None) -> tuple[str | None, str]:
    """(measured profiler spec or None, note). ort-cpu is always measured besides it."""
    from profilers.registry import get_profiler

    spec = opts.profiler or study_profiler or "ort-cpu"
    m = get_profiler(spec).measurer
    if m is None:
        return None, f"The study used {spec} (a count, not a time): measured on ort-cpu."
    if m.spec != spec:
        return m.spec, f"The study used {spec}; FP32 and INT8 are measured on the table's profiler {m.spec}."
    return spec, ""


def _tile_like(val_x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A real-image input of ``shape`` made by tiling held-out patches (for the export checks)."""
    n, c, h, w = shape
    p = val_x.shape[-1]
    reps = (-(-h // p), -(-w // p))
    rows = []
    k = 0
    for _ in range(n):
        tiles = []
        for _i in range(reps[0]):
            tiles.append(torch.cat([val_x[(k + j) % len(val_x)] for j in range(reps[1])], dim=-1))
            k += reps[1]
        rows.append(torch.cat(tiles, dim=-2)[:, :h, :w])
    return torch.stack(rows)[:, :c]


def _publish_permissions(tmp: Path) -> None:
    """mkdtemp/mkstemp make private files (0700/0600); give the result the usual umask permissions."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    for f in tmp.rglob("*"):
        if f.is_file():
            os.chmod(f, (0o777 if os.access(f, os.X_OK) else 0o666) & ~mask)


def _commit(tmp: Path, out: Path) -> None:
    _publish_permissions(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# -- the pipeline -------------------------------------------------------------------------------
@dataclass
class _Run:
    """What the steps of one finalize share."""

    opts: FinalizeOptions
    target: ExportTarget
    needs: dict[str, Any]  # what the target prepared before training (TensorRT host, AI Hub device)
    study: Any
    attrs: dict[str, Any]
    other_prof: Any  # the study's measured profiler when it is not this CPU's ort-cpu
    lat_note: str
    picked: Picked | None = None
    zoo: Any = None
    zoo_dir: Path | None = None
    task: Any = None
    shape: tuple[int, ...] = ()
    train: Any = None
    val_pairs: list = field(default_factory=list)
    val_x: Any = None
    eval_shape: tuple[int, ...] = ()
    net: Any = None
    cfg: QDRConfig | None = None
    compute: Any = None  # ens.compute.Compute
    select: Selection | None = None  # the pool QAT's checkpoints are picked on


def training_compute(opts: FinalizeOptions):
    """Where finalize trains. On the CPU in the default NCHW layout (the exported graphs and their checks were
    measured so); channels-last on CUDA."""
    from dataclasses import replace

    from ens.compute import make_compute

    compute = make_compute(opts.device, opts.amp, opts.compile)
    return compute if compute.cuda else replace(compute, channels_last=False)


def precision_warning(study_precision: str | None, target: ExportTarget, profiler: str | None = None) -> str | None:
    """A warning when the study ranked latencies in another precision than the file this target ships (none for
    the transformer-count proxy, which times nothing)."""
    if profiler == "proxy":
        return None
    ships = "int8" if target.int8 else "fp32"
    ranked = study_precision or "fp32"  # studies made before --precision timed the profiler's default, FP32
    if ranked == ships:
        return None
    return (f"warning: the study ranked latencies in {ranked.upper()}, but --export {target.name} ships "
            f"{ships.upper()}; INT8 does not speed up every block kind alike, so its front may hold another "
            f"winner for this file (search with --precision {ships} to rank what ships)")


def run_finalize(opts: FinalizeOptions, log: Callable[[str], None] = print) -> FinalizeResult:
    """The steps of the module docstring: checks, the trial fine-tuned in FP32, QAT, exports, report."""
    run = _preflight(opts)
    _load_trial(run, log)
    warning = precision_warning(run.attrs.get("precision"), run.target, run.attrs.get("profiler"))
    if warning:
        log(warning)
    t_start = time.monotonic()
    q_deg, q_fp32, ft_log = _finetune(run, log)
    out = Path(opts.out)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.resolve().parent))
    try:
        report = _report_head(run, out)
        fp32_eval, fp32_file, quality, checks = _export_fp32(run, tmp, work, q_deg, q_fp32)
        training: dict[str, Any] = {"finetune": ft_log.to_dict(), "config": run.cfg.to_dict(),
                                    "train_patch_size": int(run.train[0][0].shape[-1]),
                                    "loss_formula": LOSS_FORMULA, "lmr_formula": LMR_FORMULA}
        student = int8_eval = int8_file = None
        if run.target.int8:
            student, int8_eval, int8_file = _quantize(run, tmp, work, fp32_eval, quality, checks, training, report,
                                                      q_fp32.psnr, q_deg.psnr, log)
        if opts.ablate:
            report["ablation"] = _ablate(run.net, run.train, run.cfg, work, run.eval_shape, run.val_pairs, run.task,
                                         q_fp32.psnr, q_deg.psnr, opts, log, quality.get("int8_qdr"),
                                         run.target.fused_in_ort, run.compute, run.select)
        _whole_images(run, work, fp32_file, int8_file, quality, log)
        report.update(quality=quality, checks=checks, training=training)
        training["compute"] = run.compute.to_dict()
        report["latency"] = _latencies(fp32_file, int8_file, run.shape, opts, run.other_prof, run.lat_note, log,
                                       run.cfg.placement)
        deployed = run.target.deploy(int8_file, tmp, run.shape, run.needs, log)
        files = [fp32_file, *([int8_file] if int8_file else []), *deployed.files, _save_weights(run, tmp)]
        _annotate(files, run.picked, run.zoo)
        report["export"] = {"target": opts.export, **deployed.info, "files": [ex.file_info(f) for f in files]}
        report["wall_time_s"] = round(time.monotonic() - t_start, 1)
        samples = (_samples(run.net, int8_eval, run.val_pairs, opts.samples, opts.threads, run.target.fused_in_ort)
                   if opts.samples > 0 else None)
        write_report(tmp, _clean(report), samples)
        _commit(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise EnsError(f"writing the finalized model failed, nothing was left in {out}: {exc}") from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out}/ (report.json, MODEL_CARD.md)")
    if deployed.engine_missing is not None:
        eng = deployed.engine_missing
        raise ex.EngineNotBuilt(
            f"the TensorRT engine was NOT built ({eng.message}); wrote {out}/model_int8.onnx and "
            f"{out}/build_engine.sh: build it where TensorRT is with: {eng.command}")
    return FinalizeResult(out, report, {"fp32": run.net, "int8": student})


def _preflight(opts: FinalizeOptions) -> _Run:
    """Every check that can fail before training: target, output folder, options, study, the target's needs
    (ModelOpt, an AI Hub token), the latency profiler."""
    from ens.report import load_study
    from profilers.errors import ProfilerError
    from profilers.registry import get_profiler

    target = get_target(opts.export)
    _check_out(Path(opts.out), opts.force)
    compute = training_compute(opts)
    if opts.train_patches < 1:
        raise EnsError("--train-patches must be >= 1")
    if opts.latency_clock not in ("wall", "cpu"):
        raise EnsError(f"unknown --latency-clock {opts.latency_clock!r} (wall or cpu)")
    if opts.ablate:
        require_modelopt()
    study = load_study(opts.storage, opts.study_name)
    attrs = dict(study.user_attrs)
    needs = target.prepare(opts, attrs)
    lat_spec, lat_note = _latency_profiler(opts, attrs.get("profiler"))
    other_prof = None
    if lat_spec and get_profiler(lat_spec).device != get_profiler("ort-cpu").device:
        try:
            other_prof = get_profiler(lat_spec)
            other_prof.check()
        except ProfilerError as exc:
            raise EnsError(f"latency profiler {lat_spec}: {exc} (pass --profiler ort-cpu to measure on this CPU "
                           "only)") from None
    return _Run(opts, target, needs, study, attrs, other_prof, lat_note, compute=compute)


def _load_trial(run: _Run, log: Callable[[str], None]) -> None:
    """The picked trial's network from the study's zoo, the data, the QDR config of the target."""
    from ens.data import load_pairs
    from ens.tasks import get_task
    from ens.training import seed_everything
    from ens.zoo.prebuilt import study_zoo_dir
    from ens.zoo.store import Zoo

    opts, attrs = run.opts, run.attrs
    run.picked = pick_trial(run.study, opts.trial, opts.latency_budget, opts.pick)
    log(f"picked trial {run.picked.number} ({run.picked.how}): {run.picked.arch}  {run.picked.psnr:.2f} dB")
    run.zoo_dir = study_zoo_dir(attrs, opts.zoo, log)
    if run.zoo_dir is None or not (run.zoo_dir / "manifest.json").is_file():
        raise EnsError(f"the study's zoo {run.zoo_dir or attrs.get('zoo_dir') or '(not recorded)'} is not there: "
                       "pass --zoo ZOO_DIR")
    run.zoo = zoo = Zoo.load(run.zoo_dir)
    want = run.picked.zoo_id or attrs.get("zoo_id")
    if want and zoo.zoo_id != want:
        raise EnsError(f"trial {run.picked.number} was evaluated with zoo {want}, but {run.zoo_dir} holds zoo "
                       f"{zoo.zoo_id}")
    run.task = get_task(attrs.get("task") or zoo.manifest.task)
    data = _data_dir(opts, attrs)
    run.shape = _shape(opts, attrs)
    patch = int(zoo.manifest.patch_size)
    train_patch = opts.patch_size or patch
    if train_patch % 8:
        raise EnsError(f"--patch-size must be a multiple of 8 (the U-Net's three downsamplings), got {train_patch}")
    seed_everything(opts.qdr.seed)
    run.train = load_pairs(run.task, data, "train", patch_size=train_patch, seed=opts.qdr.seed,
                           num_patches=opts.train_patches)
    val = load_pairs(run.task, data, "val", patch_size=patch, seed=opts.qdr.seed, num_patches=zoo.manifest.val_patches)
    run.val_pairs = [val[i] for i in range(len(val))]
    run.val_x = torch.stack([p[0] for p in run.val_pairs])
    run.eval_shape = (1, 3, patch, patch)
    run.net = zoo.build(run.picked.arch)
    if opts.init_weights:
        _load_weights(run.net, Path(opts.init_weights))
    cfg = opts.qdr.variant(placement=run.target.placement_for(opts.qdr.placement))
    run.cfg = cfg = cfg.variant(weight_bits=run.target.weight_bits(cfg.placement, cfg.weight_bits))
    if cfg.select_every > 0 and (cfg.finetune_steps > 0 or (run.target.int8 and cfg.qat_steps > 0)):
        if cfg.select_by == "whole":
            run.select = Selection(selection_images(run.task, data, cfg.select_images,
                                                    opts.qdr.seed + SELECT_SEED_OFFSET), run.task, by="whole")
        else:
            pool = load_pairs(run.task, data, "train", patch_size=train_patch, num_patches=cfg.select_patches,
                              seed=opts.qdr.seed + SELECT_SEED_OFFSET, augment=False)
            run.select = Selection([pool[i] for i in range(len(pool))], run.task)


def selection_images(task: Any, data: str | None, limit: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` whole training images as (degraded, clean), their centres at most :data:`SELECT_SIDE`
    px a side (the checks' cost; a multiple of 8 and of the task's scale), for choosing finalize's checkpoints."""
    import math

    from ens.data import load_pairs
    from ens.zoo.build import centre_crop

    full = load_pairs(task, data, "train", full_images=True, seed=seed)
    m = 8 * task.scale // math.gcd(8, task.scale)
    cap = max(m, SELECT_SIDE // m * m)
    return [(centre_crop(full[i][0], cap), centre_crop(full[i][1], cap)) for i in range(min(limit, len(full)))]


def _finetune(run: _Run, log: Callable[[str], None]) -> tuple[Any, Any, Any]:
    from ens.evaluate import evaluate

    log(f"fine-tuning in FP32 for {run.cfg.finetune_steps} steps")
    ft_log = finetune_fp32(run.net, run.train, run.cfg, show_progress=run.opts.show_progress, compute=run.compute,
                           select=run.select)
    _log_selection(ft_log, run, "FP32", run.cfg.finetune_steps, "the zoo's weights", log)
    run.net.eval()
    q_deg = evaluate(None, run.val_pairs, run.task)
    q_fp32 = evaluate(run.net, run.val_pairs, run.task)
    log(f"FP32: {q_fp32.psnr:.3f} dB / {q_fp32.ssim:.4f} (degraded input {q_deg.psnr:.3f} dB)")
    return q_deg, q_fp32, ft_log


def _log_selection(train_log: Any, run: _Run, what: str, steps: int, start: str, log: Callable[[str], None]) -> None:
    sel = train_log.extra.get("selection", {})
    if sel.get("picked_step") is not None and run.select is not None:
        scores = sel["psnr_by_step"]
        log(f"{what} state kept: step {sel['picked_step']} of {steps}, {scores[sel['picked_step']]:.2f} dB "
            f"(best of the checks by {run.select.describe()}; {start} {scores[0]:.2f} dB)")


def _report_head(run: _Run, out: Path) -> dict[str, Any]:
    from blocks.stats import count_macs, count_params
    from profilers.base import format_shape
    from studies.storage import redact

    return {
        "study": run.study.study_name, "storage": redact(str(run.opts.storage)), "task": run.task.name,
        "preset": run.attrs.get("preset") or run.zoo.manifest.preset, "zoo_id": run.zoo.zoo_id,
        "zoo_dir": str(run.zoo_dir), "trial": run.picked.to_dict(), "arch": run.picked.arch,
        "params": count_params(run.net), "macs": count_macs(run.net, run.shape), "shape": list(run.shape),
        "shape_str": format_shape(run.shape),
    }


def _export_fp32(run: _Run, tmp: Path, work: Path, q_deg, q_fp32) -> tuple[Path, Path, dict, dict]:
    """FP32 ONNX twice, each checked against PyTorch: for evaluation (zoo patch size) and deployed (study shape)."""
    fp32_eval = work / "fp32_eval.onnx"
    err_eval = ex.export_fp32(run.net, run.eval_shape, fp32_eval, run.val_x[:1])
    fp32_file = tmp / "model_fp32.onnx"
    if tuple(run.shape) == run.eval_shape:
        shutil.copyfile(fp32_eval, fp32_file)
        err_dep = err_eval
    else:
        err_dep = ex.export_fp32(run.net, run.shape, fp32_file, _tile_like(run.val_x, run.shape))
    q_fp32_ort = ex.evaluate_onnx(fp32_eval, run.val_pairs, run.task, run.opts.threads)
    checks: dict[str, Any] = {"fp32_onnx_max_abs": max(err_eval, err_dep), "fp32_tolerance": ex.FP32_TOLERANCE}
    quality: dict[str, Any] = {
        "pairs": len(run.val_pairs), "patch_size": run.eval_shape[-1], "metric": run.task.metric_description,
        "int8_runtime": INT8_RUNTIME[run.target.fused_in_ort],
        "degraded": q_deg.to_dict(), "fp32": quality_entry(q_fp32), "fp32_onnx": quality_entry(q_fp32_ort),
    }
    return fp32_eval, fp32_file, quality, checks


def _quantize(run: _Run, tmp: Path, work: Path, fp32_eval: Path, quality: dict, checks: dict, training: dict,
              report: dict, fp32_psnr: float, deg_psnr: float, log: Callable[[str], None]) -> tuple[Any, Path, Path]:
    """QDR QAT, the Q/DQ INT8 exports (checked against the fake-quant model), and the plain PTQ baseline."""
    from ens.evaluate import evaluate

    opts, cfg, fuse = run.opts, run.cfg, run.target.fused_in_ort
    to_u8 = run.target.uint8_activations(cfg.placement)
    log(f"QAT with distillation for {cfg.qat_steps} steps")
    student, q_log = qdr_train(run.net, run.train, cfg, show_progress=opts.show_progress, compute=run.compute,
                               select=run.select)
    _log_selection(q_log, run, "QAT", cfg.qat_steps, "the calibrated start", log)
    training["qat"] = q_log.to_dict()
    int8_eval = work / "int8_eval.onnx"
    ex.export_int8(student, run.eval_shape, int8_eval, uint8_activations=to_u8)
    checks["int8_vs_fakequant"] = ex.check_int8(student, int8_eval, run.val_x[: min(4, len(run.val_x))], fuse)
    checks["int8_tolerance"] = ex.INT8_TOLERANCE
    q_int8 = ex.evaluate_onnx(int8_eval, run.val_pairs, run.task, opts.threads, fuse)
    quality["int8_qdr"] = quality_entry(q_int8, fp32_psnr, deg_psnr)
    quality["int8_fakequant_torch"] = quality_entry(evaluate(student, run.val_pairs, run.task), fp32_psnr, deg_psnr)
    log(f"INT8 (QDR, ONNX Runtime): {q_int8.psnr:.3f} dB / {q_int8.ssim:.4f} "
        f"({quality['int8_qdr']['recovery_pct']}% of FP32)")
    int8_file = tmp / "model_int8.onnx"
    if tuple(run.shape) == run.eval_shape:
        shutil.copyfile(int8_eval, int8_file)
    else:
        ex.export_int8(student, run.shape, int8_file, uint8_activations=to_u8)
        checks["int8_deploy_vs_fakequant"] = ex.check_int8(student, int8_file, _tile_like(run.val_x, run.shape), fuse)
    _ptq_baseline(run, work, fp32_eval, quality, fp32_psnr, deg_psnr, log)
    report["quantization"] = _quantization_info(run, student, int8_file, to_u8)
    return student, int8_eval, int8_file


def ptq_calibration(train: Any, n: int, size: int | None = None) -> list[np.ndarray]:
    """The PTQ baseline's calibration inputs: the first ``n`` training patches as of epoch 0, whatever training
    ran before (it had read them at the last QAT step's augmentation, so the baseline moved with --qat-steps);
    ``size``: their centres, that many px a side (the evaluation files' shape when training patches are larger)."""
    if hasattr(train, "set_epoch"):
        train.set_epoch(0)
    out = []
    for i in range(n):
        x = train[i % len(train)][0]
        if size is not None and x.shape[-1] > size:
            y0, x0 = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
            x = x[..., y0 : y0 + size, x0 : x0 + size]
        out.append(x.unsqueeze(0).contiguous().numpy())
    return out


def _ptq_baseline(run: _Run, work: Path, fp32_eval: Path, quality: dict, fp32_psnr: float, deg_psnr: float,
                  log: Callable[[str], None]) -> None:
    """Plain post-training quantization of the same FP32 model, the baseline QDR is compared with."""
    opts = run.opts
    calib = ptq_calibration(run.train, opts.calib_patches, run.eval_shape[-1])
    seven = run.cfg.weight_bits == 7
    ptq_eval = ex.ptq_int8(fp32_eval, work / "ptq_eval.onnx", calib, reduce_range=seven)
    q_ptq = ex.evaluate_onnx(ptq_eval, run.val_pairs, run.task, opts.threads, run.target.fused_in_ort)
    quality["int8_ptq"] = quality_entry(q_ptq, fp32_psnr, deg_psnr)
    quality["int8_ptq"]["method"] = ("onnxruntime quantize_static, QDQ, MinMax, U8 activations, S8 "
                                     f"per-channel weights{' (reduce_range: 7-bit)' if seven else ''}, "
                                     f"{opts.calib_patches} training patches")
    log(f"INT8 (plain PTQ, ONNX Runtime): {q_ptq.psnr:.3f} dB ({quality['int8_ptq']['recovery_pct']}%)")


def _whole_images(run: _Run, work: Path, fp32_file: Path, int8_file: Path | None, quality: dict,
                  log: Callable[[str], None]) -> None:
    """The shipped files (and a plain PTQ of the deployed FP32 file) on the first whole held-out images."""
    from ens.finalize.whole_images import calibration_mosaics, degradation_levels, whole_image_quality
    from ens.zoo.build import held_out_images

    opts = run.opts
    if opts.eval_images <= 0:
        return
    data = _data_dir(opts, run.attrs)
    levels = degradation_levels(run.task, synthetic=data is None or run.train.info.get("layout") == "clean")
    pair_sets = {t.name: held_out_images(t, data, opts.eval_images) for t in levels}
    ptq_file = None
    if int8_file is not None:
        calib = calibration_mosaics(ptq_calibration(run.train, opts.calib_patches), run.shape)
        ptq_file = ex.ptq_int8(fp32_file, work / "ptq_deploy.onnx", calib, reduce_range=run.cfg.weight_bits == 7)
    quality["whole_images"] = whole_image_quality(run.net, pair_sets, run.task, fp32_file, int8_file, ptq_file,
                                                  opts.threads, run.target.fused_in_ort, log=log)


def _quantization_info(run: _Run, student: Any, int8_file: Path, to_u8: bool) -> dict[str, Any]:
    from ens.finalize.qat import quant_summary

    cfg = run.cfg
    kernels = ex.ort_kernels(int8_file)
    return {
        "tool": _modelopt_version(), "scheme": "INT8 symmetric; weights per output channel, activations "
        f"per tensor ({PLACEMENT_TEXT[cfg.placement]}); max calibration, then QAT",
        "weight_bits": cfg.weight_bits, "weight_bits_note": WEIGHT_BITS_NOTE[cfg.weight_bits],
        "placement": cfg.placement,
        "activation_type": "uint8 (ModelOpt's int8 rewritten, exact)" if to_u8 else "int8",
        **quant_summary(student), "ops": ex.precision_breakdown(int8_file),
        "ort_cpu_convs": ex.conv_kernels(kernels), "higher_precision_note": HIGHER_PRECISION_NOTE[cfg.placement],
        "ort_cpu_integer_kernels": ex.integer_kernels(kernels),
    }


def _save_weights(run: _Run, tmp: Path) -> Path:
    """The fine-tuned FP32 weights (safetensors), to rebuild or continue."""
    from ens.training import atomic_save_tensors

    wfile = tmp / "model_fp32.safetensors"
    atomic_save_tensors(run.net.state_dict(), wfile, metadata={"arch": run.picked.arch, "zoo_id": run.zoo.zoo_id})
    return wfile


def _load_weights(net: torch.nn.Module, path: Path) -> None:
    """FP32 weights of a previous finalize (``model_fp32.safetensors``), to skip or continue fine-tuning."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise EnsError(f"cannot read --init {path}: {exc}") from None
    want = net.state_dict()
    if set(state) != set(want) or any(state[k].shape != want[k].shape for k in want):
        raise EnsError(f"--init {path} holds weights of another network than this trial's")
    net.load_state_dict(state)


def _modelopt_version() -> str:
    try:
        import modelopt

        return f"nvidia-modelopt {modelopt.__version__}"
    except Exception:
        return "nvidia-modelopt"


def _annotate(files: list[Path], picked: Picked, zoo: Any) -> None:
    from profilers import onnx_info
    from search_spaces.arch import Arch

    arch = Arch.parse(picked.arch)
    for f in files:
        if f.suffix == ".onnx":
            onnx_info.annotate(f, arch=picked.arch, arch_hash=arch.hash, block_kinds=arch.block_kinds(zoo.config),
                               config=zoo.config.to_dict(), zoo_id=zoo.zoo_id, trial=picked.number,
                               precision=onnx_info.graph_precision(f))


def _ablate(net, train, cfg: QDRConfig, work: Path, eval_shape, val_pairs, task, fp32_psnr, deg_psnr,
            opts: FinalizeOptions, log, main: dict[str, Any] | None, fuse: bool, compute=None,
            select: Selection | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, changes in ABLATIONS.items():
        if name == "qdr" and main is not None and not (cfg.spark or cfg.conf_kd) and cfg.kd == "latent" and cfg.lmr:
            out[name] = {**main, "description": ABLATION_TEXT[name], "same_as": "the main run"}
            continue
        vcfg = cfg.variant(**changes) if name != "qdr" else cfg.variant(kd="latent", lmr=True, spark=False,
                                                                         conf_kd=False)
        if name != "no_kd":
            vcfg = vcfg.variant(spark=False, conf_kd=False)
        log(f"ablation {name}: {ABLATION_TEXT[name]}")
        student, q_log = qdr_train(net, train, vcfg, show_progress=opts.show_progress, description=f"QAT {name}",
                                   select=select, **({"compute": compute} if compute is not None else {}))
        path = work / f"ablate_{name}.onnx"
        ex.export_int8(student, eval_shape, path)
        q = ex.evaluate_onnx(path, val_pairs, task, opts.threads, fuse)
        out[name] = {**quality_entry(q, fp32_psnr, deg_psnr), "description": ABLATION_TEXT[name],
                     "lmr_weights": q_log.lmr_weights, "qat_seconds": q_log.seconds}
        log(f"  {name}: {q.psnr:.3f} dB")
    return out


ORT_SLOWER_NOTE = {
    "trt": "INT8 runs slower than FP32 here: the Q/DQ placement is TensorRT's (conv inputs and weights), and ONNX "
           "Runtime fuses a conv into QLinearConv only where its output is quantized too (--export onnx_int8 uses "
           "the placement it fuses). For ONNX Runtime CPU deployment of this model, use model_fp32.onnx.",
    "ort": "INT8 runs slower than FP32 here although ONNX Runtime runs the convolutions as QLinearConv (see "
           "quantization.ort_cpu_convs): at this width the INT8 convs save less than the quantize/dequantize "
           "steps around the float ops (attention, LayerNorm, SSM scan, gates) cost; bench/bench_int8_width.py "
           "shows the gain growing with the width. For ONNX Runtime CPU deployment of this model, use "
           "model_fp32.onnx.",
}


def ort_slower_note(speedup: float | None, placement: str = "trt") -> str | None:
    """The model card's note when the INT8 file is slower than FP32 in ONNX Runtime CPU."""
    return ORT_SLOWER_NOTE[placement] if speedup is not None and speedup < 1.0 else None


def _latencies(fp32_file: Path, int8_file: Path | None, shape, opts: FinalizeOptions, other_prof, note: str,
               log, placement: str = "trt") -> dict[str, Any]:
    from profilers.base import format_shape
    from profilers.errors import ProfilerError
    from profilers.ort_cpu import int8_dot_product

    res: dict[str, Any] = {}
    files = {"fp32": fp32_file}
    if int8_file is not None:
        files["int8"] = int8_file
    log("measuring ONNX Runtime CPU latency (FP32 and INT8 interleaved)")
    ort = ex.ort_cpu_latency(files, shape, threads=opts.threads, rounds=opts.latency_rounds, runs=opts.latency_runs,
                             clock=opts.latency_clock)
    entry: dict[str, Any] = {"profiler": f"ort-cpu?threads={opts.threads}", "device": ort["device"],
                             "cpu_int8": int8_dot_product(), "shape": format_shape(shape),
                             **{k: v for k, v in ort.items() if k != "device"}}
    if int8_file is not None:
        log("profiling the INT8 graph's kernels (ONNX Runtime profiler, a separate pass)")
        entry["int8_time_shares"] = ex.int8_time_shares(int8_file, shape, threads=opts.threads)
    slower = ort_slower_note(ort.get("speedup"), placement)
    if note or slower:
        entry["note"] = " ".join(n for n in (note, slower) if n)
    res["ort_cpu"] = entry
    if other_prof is not None:
        d: dict[str, Any] = {"profiler": other_prof.spec, "device": other_prof.device, "shape": format_shape(shape)}
        float_prec = other_prof.float_precision
        for key, path, prec in (("fp32", fp32_file, float_prec), ("int8", int8_file, "int8")):
            if path is None:
                continue
            try:
                d[key] = other_prof.measure(path, shape, prec).to_dict()
            except ProfilerError as exc:
                d[f"{key}_error"] = str(exc)
        if "fp32" in d and "int8" in d and d["int8"]["median_ms"]:
            d["speedup"] = round(d["fp32"]["median_ms"] / d["int8"]["median_ms"], 3)
        if float_prec == "fp16":
            d["note"] = "TensorRT: the FP32 ONNX is built as an FP16 engine, the Q/DQ ONNX with --int8 --fp16"
        res["study_profiler"] = d
    return res


@torch.no_grad()
def _samples(net, int8_eval: Path | None, val_pairs, n: int, threads: int, fuse_qdq: bool = True) -> bytes:
    rows = []
    m8 = ex.OnnxModel(int8_eval, threads, fuse_qdq) if int8_eval is not None else None
    for deg, clean in val_pairs[:n]:
        x = deg.unsqueeze(0)
        fp = net(x)[0].clamp(0, 1)
        q = m8(x)[0].clamp(0, 1) if m8 is not None else torch.zeros_like(fp)
        rows.append((deg, fp, q, clean))
    return samples_png(rows)


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf to None, tuples to lists, numpy scalars to Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v

