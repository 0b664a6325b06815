"""FP32 fine-tuning and QDR quantization-aware training with distillation (NVIDIA ModelOpt fake quantization).

Quantization scheme: INT8, symmetric; weights per output channel (``axis=0``), activations per tensor (the
input of every ``Conv2d``; with the ``ort`` placement its output and every element-wise op's of
:mod:`blocks.ops` too), max calibration on training batches, then QAT with straight-through gradients.
ModelOpt replaces each ``nn.Conv2d`` by a ``QuantConv2d`` whose input and weight pass through a
``TensorQuantizer``; everything else (LayerNorm, the attention matmuls and softmax, the SSD scan's softplus /
exp / cumsum / chunk matmuls, GELU; with the ``trt`` placement the element-wise ops too) is left in floating
point (FP32 in ONNX Runtime, FP16 in a TensorRT ``--int8 --fp16`` engine).
``keep_fp`` patterns (fnmatch on module names, e.g. ``*x_proj``) keep chosen convolutions in floating
point too.

Why ModelOpt (measured on this 2-core CPU, tiny preset with T, M and E blocks, 64x64 and 256x256):

- ModelOpt (``mtq.quantize`` + legacy TorchScript exporter, ``dynamo=False``): exports a clean Q/DQ
  graph (114 QuantizeLinear/DequantizeLinear pairs on the 58 convolutions, per-channel weight
  scales, the SSM's Exp/CumSum/Softplus untouched) in 24 s at 64x64; ORT runs it and matches the
  fake-quant torch model to a max abs error of 0.0066 (mean 0.0025 at 256x256, i.e. below one 8-bit
  step); training is eager PyTorch (a QAT step costs ~2.5x an FP32 step). It is TensorRT's own QAT
  path, so the same ONNX builds an explicit-quantization engine.
- torchao PT2E (``prepare_qat_pt2e`` with ``X86InductorQuantizer(is_qat=True)``, dynamo exporter):
  also a valid Q/DQ graph that ORT runs (max abs error to fake-quant 0.013), but ``torch.export``
  takes 19 s, one training step of the exported graph 10 s (vs ~1 s eager) and the dynamo ONNX
  export 52 s at 64x64; its annotations target x86 Inductor, not TensorRT.
- Eager/FX QAT of ``torch.ao`` exports badly (REFERENCE.md) and PT2E left torch in 2.13.

Placement (``QDRConfig.placement``). ``trt``, for ``trt_int8`` and ``qnn_int8``: conv inputs only, as
TensorRT wants. ``ort``, for ``onnx_int8``: conv outputs too (all but the final conv), the output of every
element-wise op of :mod:`blocks.ops` (residual sums, simple gates, the LDG sigmoid and gate, the skip joins;
the layer scales before the sums folded into the convs), and the exported activations rewritten S8 -> U8
(:mod:`ens.finalize.qdq_uint8`) with each pixel shuffle moved onto the 8-bit side of its dequantize
(:mod:`ens.finalize.qdq_movement`); each LDG's ReLU output is quantized on the unsigned grid in place of its depthwise
conv's (:data:`RELU_FOLD`). ONNX Runtime fuses ``DQ -> Conv -> Q`` into ``QLinearConv`` only when the
conv output is quantized and both sides are U8, and ``DQ, DQ -> Add|Mul|Concat -> Q`` into ``QLinearAdd`` /
``QLinearMul`` / ``QLinearConcat``: each op's inputs are the quantized outputs of earlier convs and ops, so each
tensor is quantized once, where it is made. Quantizing the sums' inputs again (their own quantizers) fused one
more sum but cost quality: denoise winner, 200 QAT steps, 29.99 against 30.03 dB. With the ``trt`` placement
no conv fuses and INT8 runs slower than FP32 on this CPU (bench/bench_int8_width.py).

Schedules (INT8-SR's Stage 3, as fractions of the QAT steps): until ``observer_freeze`` (0.3) each
activation range follows an EMA (momentum 0.9) of the batch max ("observers on"); until
``fakequant_freeze`` (0.9) the per-channel weight ranges are re-synchronised with the weights after
every step; afterwards every scale is frozen, so the last steps train with exactly the scales that
are exported. Weights are clipped to ``+-weight_clip`` (2.0) before calibration and after every
step; BatchNorm layers (none in the U-Net; any that exist) are recalibrated before calibration.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ens.compute import CPU, Compute
from ens.errors import EnsError
from ens.finalize.losses import (
    MagnitudeReweighting,
    confidence_kd,
    latent_kd,
    output_kd,
    reconstruction_loss,
    weighted_output_kd,
)
from ens.train_loop import Every, Loop, Schedule
from ens.training import batch_indices, stack_batch

KD_MODES = ("latent", "output", "none")
#: where activations are quantized. ``trt``: conv inputs (TensorRT's placement: it fuses a Q/DQ into the
#: next conv and picks output precisions itself). ``ort``: conv outputs as well, except the network's
#: final convolution, so ONNX Runtime fuses each ``DQ -> Conv -> Q`` into one QLinearConv.
PLACEMENTS = ("trt", "ort")
SELECT_BY = ("whole", "patches")


def placement_for(export: str, requested: str = "auto") -> str:
    """The placement an export target gets (``ens.finalize.targets``); ``trt`` outside finalize; or ``requested``."""
    if requested != "auto":
        return requested
    from ens.finalize.targets import get_target

    return get_target(export).placement if export else "trt"


def weight_bits_for(export: str, placement: str, requested: int | None = None) -> int:
    """The weight bits of an export target at a placement (``ExportTarget.weight_bits``); or ``requested``."""
    from ens.finalize.targets import get_target

    return get_target(export).weight_bits(placement, requested)


def weight_range_scale(bits: int) -> float:
    """Multiplier on a weight quantizer's amax: 7 bits is the 8-bit grid at twice the step."""
    return float(2 ** (8 - bits))


#: the final convolution of a HybridUNet: its output is the residual added to the input image, kept in
#: floating point. Measured on this CPU (deblur winner, tiny, 256², ORT per-node profile): as a QLinearConv with
#: its 3 output channels quantized it took 4.9 ms, against 3.6 ms for the float conv, so INT8 would not even pay.
FINAL_CONV = "output"


#: the LDG's ``DW3x3 -> ReLU -> PW`` (:class:`blocks.efm.LearnableDegradationGate`), with the ``ort`` placement:
#: the depthwise conv's output is not quantized, and the ReLU's is, by the PW conv's input quantizer made
#: unsigned (range [0, amax] on 0..255, zero point 0). Quantizing to that grid clips at zero, which *is* the ReLU,
#: so ONNX Runtime drops the Relu (its ReluQuantFusion: a Q whose zero point is the type's minimum) and runs
#: ``DQ -> Conv -> Q`` as one QLinearConv. Quantized on the signed grid before the ReLU, each LDG kept a float Relu
#: between a DequantizeLinear and a QuantizeLinear (the micro all-G graph: 11 Relu, 12 Q, 13 DQ in float).
RELU_FOLD: tuple[dict[str, Any], ...] = (
    {"quantizer_name": "*ldg.dw.output_quantizer", "enable": False},
    {"quantizer_name": "*ldg.to_map.input_quantizer", "cfg": {"num_bits": 8, "axis": None, "unsigned": True}},
)


class QATUnavailable(EnsError):
    """The quantization toolkit is not installed."""


def require_modelopt():
    """``modelopt.torch.quantization``, or a clear EnsError saying how to install it."""
    # ModelOpt's export helpers warn, when first imported, that Hugging Face models cannot be exported without
    # transformers: true, and nothing to do with ens's networks
    warnings.filterwarnings("ignore", message="Cannot find transformers package", category=UserWarning)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise QATUnavailable(
            f"INT8 finalize needs NVIDIA ModelOpt ({exc}): pip install 'ens[qat]' (or pip install nvidia-modelopt "
            "huggingface_hub); --export onnx_fp32 works without it"
        ) from None
    return mtq


@dataclass(frozen=True)
class QDRConfig:
    """Every knob of finalize's training. ``kd``: latent (QDR), output, none."""

    finetune_steps: int = 200
    # 600: with the residual sums quantized, 200 steps kept 99.40% (denoise) / 99.66% (deblur) of the FP32 PSNR
    # and 600 kept 99.81% / 99.92%, +0.15 / +0.10 dB over ORT's PTQ (tiny all-E winners; about 2 minutes more)
    qat_steps: int = 600
    batch_size: int = 8
    lr: float = 2e-4
    qat_lr: float = 5e-5
    lmr_lr: float = 1e-2
    dct_weight: float = 0.0
    # draw a fresh training pool (new crops and degradations) every N steps of the FP32 fine-tuning / of QAT; 0: one
    # fixed pool (64 steps of 8 patches go once round finalize's pool of 512). Fresh pools in fine-tuning gave
    # +0.06 (denoise) / +0.24 dB (derain) FP32 and +0.03 / +0.12 dB INT8 QDR; in QAT too, -0.19 dB on derain
    # (bench/records/finalize-pools-2026-12-03.json)
    resample_every: int = 64
    qat_resample_every: int = 0
    # keep the fine-tuning and QAT states (their starts included: the zoo's weights, the calibrated start) that
    # score best on training images, checked every N steps (0: keep the last step)
    select_every: int = 100
    select_patches: int = 128
    # what the checks score: "whole", PSNR on whole training images (centres of at most 512 px), or "patches",
    # on training-image patches drawn apart from the training pool. On derain's --val whole finalist QAT raised
    # the patches all along (+0.35 dB over 600 steps) while whole images, held-out and unseen, fell after step
    # 200; the whole training images peaked at step 200 with them (bench/records/finalize-select-2026-12-05.json)
    select_by: str = "whole"
    select_images: int = 4
    kd: str = "latent"
    lmr: bool = True
    kd_weight: float = 1.0  # the fixed KD multiplier when LMR is off
    conf_kd: bool = False
    spark: bool = False
    weight_clip: float | None = 2.0
    grad_clip: float | None = 1.0
    calib_batches: int = 4
    observer_freeze: float = 0.3
    fakequant_freeze: float = 0.9
    keep_fp: tuple[str, ...] = ()
    placement: str = "auto"  # auto: placement_for(the export target); trt outside finalize
    weight_bits: int | None = None  # 8, or 7 (weights in [-64, 64]); None: weight_bits_for(target, placement)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kd not in KD_MODES:
            raise EnsError(f"unknown KD mode {self.kd!r} (choose from {', '.join(KD_MODES)})")
        if self.placement not in (*PLACEMENTS, "auto"):
            raise EnsError(f"unknown Q/DQ placement {self.placement!r} (choose from auto, {', '.join(PLACEMENTS)})")
        for name in ("finetune_steps", "qat_steps"):
            if getattr(self, name) < 0:
                raise EnsError(f"--{name.replace('_', '-')} must be >= 0")
        if self.select_every < 0 or self.select_patches < 1 or self.select_images < 1:
            raise EnsError("--select-every must be >= 0 and the selection pool at least 1 patch or image")
        if self.select_by not in SELECT_BY:
            raise EnsError(f"unknown --select-by {self.select_by!r} (choose from {', '.join(SELECT_BY)})")
        if self.resample_every < 0 or self.qat_resample_every < 0:
            raise EnsError("--resample-every and --qat-resample-every must be >= 0 (0: one fixed pool)")
        if self.batch_size < 1 or self.calib_batches < 1:
            raise EnsError("--batch-size and calibration batches must be >= 1")
        if not (0.0 <= self.observer_freeze <= self.fakequant_freeze <= 1.0):
            raise EnsError("need 0 <= observer-freeze <= fakequant-freeze <= 1 (fractions of the QAT steps)")
        if self.weight_clip is not None and self.weight_clip <= 0:
            raise EnsError("--weight-clip must be positive")
        if self.weight_bits not in (None, 7, 8):
            raise EnsError(f"--weight-bits must be 8, 7 or auto, got {self.weight_bits}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_fp"] = list(self.keep_fp)
        return d

    def variant(self, **changes: Any) -> QDRConfig:
        return replace(self, **changes)


# -- model surgery ------------------------------------------------------------------------------
def quant_config(keep_fp: Sequence[str] = (), placement: str = "trt", relu_fold: bool = True) -> dict[str, Any]:
    """ModelOpt config: INT8 per-channel weights, per-tensor inputs (and with ``placement="ort"``
    outputs, but not of :data:`FINAL_CONV`) of every Conv2d/Linear; with ``ort`` and ``relu_fold`` the LDG's ReLU
    quantized as :data:`RELU_FOLD` says (``relu_fold=False``: the former placement, kept for the bench)."""
    cfg: list[dict[str, Any]] = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}},
    ]
    if placement == "ort":
        cfg += [{"quantizer_name": "*output_quantizer", "cfg": {"num_bits": 8, "axis": None}},
                {"quantizer_name": f"{FINAL_CONV}.output_quantizer", "enable": False},
                *(RELU_FOLD if relu_fold else ())]
    for pat in keep_fp:
        cfg.append({"quantizer_name": f"{pat}.*_quantizer", "enable": False})
    return {"quant_cfg": cfg, "algorithm": "max"}


def register_quant_elementwise(mtq: Any) -> None:
    """Teach ModelOpt to quantize the output of :mod:`blocks.ops`' element-wise modules (``ELEMENTWISE``: ``Add``,
    ``Mul``, ``Sigmoid``, ``Concat``; once per process). ``quant_config`` enables those quantizers for the ``ort``
    placement."""
    from modelopt.torch.quantization.nn import QuantModule, TensorQuantizer
    from modelopt.torch.quantization.tensor_quant import QUANT_DESC_8BIT_PER_TENSOR

    from blocks.ops import ELEMENTWISE

    class QuantElementwise(QuantModule):
        """The element-wise op with a fake quantizer on its output (disabled until a config enables it)."""

        def _setup(self) -> None:
            self._register_temp_attribute("output_quantizer", TensorQuantizer(QUANT_DESC_8BIT_PER_TENSOR))
            self.output_quantizer.disable()

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.output_quantizer(super().forward(*args))

    for cls in ELEMENTWISE:
        if cls not in mtq.QuantModuleRegistry:
            mtq.QuantModuleRegistry.register({cls: f"blocks.ops.{cls.__name__}"})(
                type(f"Quant{cls.__name__}", (QuantElementwise,), {}))


def fold_layer_scales(model: nn.Module) -> int:
    """Fold every block's per-channel residual scales into the conv before them (exact; e.g.
    :meth:`blocks.efm.EFMBlock.fold_layer_scales`), so that conv -> residual sum fuses; returns how many
    blocks were folded."""
    folded = [m for m in model.modules() if callable(getattr(m, "fold_layer_scales", None))]
    for m in folded:
        m.fold_layer_scales()
    return len(folded)


def activation_quantizers(model: nn.Module) -> Iterator[nn.Module]:
    """Every enabled per-tensor activation quantizer: the inputs and outputs of convs, the outputs of residual
    sums (not the per-channel weight quantizers)."""
    for name, q in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("input_quantizer", "output_quantizer") and _enabled(q):
            yield q


def quantized_elementwise(model: nn.Module) -> dict[str, int]:
    """How many of :mod:`blocks.ops`' element-wise ops have their output quantized, by op (``Add``: the residual
    sums and the LDG gate's sum; ``Mul``: simple gates and the LDG gate; ``Sigmoid``: the LDG maps)."""
    from blocks.ops import ELEMENTWISE

    return {cls.__name__: sum(isinstance(m, cls) and _enabled(getattr(m, "output_quantizer", None))
                              for m in model.modules()) for cls in ELEMENTWISE}


def quant_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every module ModelOpt made quantizable (it has input and weight quantizers)."""
    for name, m in model.named_modules():
        if hasattr(m, "input_quantizer") and hasattr(m, "weight_quantizer"):
            yield name, m


def _enabled(q: Any) -> bool:
    return bool(getattr(q, "is_enabled", False))


def quant_summary(model: nn.Module) -> dict[str, Any]:
    quantized, kept, outputs = [], [], 0
    for name, m in quant_modules(model):
        (quantized if _enabled(m.input_quantizer) and _enabled(m.weight_quantizer) else kept).append(name)
        outputs += _enabled(getattr(m, "output_quantizer", None))
    return {"quantized_layers": len(quantized), "float_layers": kept, "quantized_outputs": outputs,
            "quantized_elementwise": quantized_elementwise(model)}


@torch.no_grad()
def clip_weights(model: nn.Module, limit: float | None) -> None:
    if limit is None:
        return
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.clamp_(-limit, limit)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[torch.Tensor]) -> int:
    """Re-estimate BatchNorm running statistics on ``batches``; returns how many layers there were."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    was = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in batches:
        model(x)
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was)
    return len(bns)


def quantize_model(model: nn.Module, calib: Sequence[torch.Tensor], keep_fp: Sequence[str] = (),
                   placement: str = "trt", weight_bits: int = 8, relu_fold: bool = True) -> nn.Module:
    """Insert ModelOpt fake quantizers in ``model`` (in place) and max-calibrate them on ``calib``; with
    ``weight_bits=7`` the weight ranges are doubled, so the exported INT8 weights lie in [-64, 64]. With the
    ``ort`` placement the blocks' layer scales are folded into their convs first (:func:`fold_layer_scales`)."""
    mtq = require_modelopt()
    register_quant_elementwise(mtq)
    if placement == "ort":
        fold_layer_scales(model)
    was = model.training
    model.eval()

    def loop(m: nn.Module) -> None:
        with torch.no_grad():
            for x in calib:
                m(x)

    with contextlib.redirect_stdout(io.StringIO()):
        model = mtq.quantize(model, quant_config(keep_fp, placement, relu_fold), forward_loop=loop)
    if weight_bits != 8:
        with torch.no_grad():
            for _, m in quant_modules(model):
                if _enabled(m.weight_quantizer) and m.weight_quantizer.amax is not None:
                    m.weight_quantizer.amax = m.weight_quantizer.amax * weight_range_scale(weight_bits)
    model.train(was)
    return model


class RangeSchedule:
    """Observer (activation EMA) and weight-range synchronisation, switched off by the freeze schedule."""

    def __init__(self, model: nn.Module, momentum: float = 0.9, weight_bits: int = 8) -> None:
        self.momentum = momentum
        self.weight_scale = weight_range_scale(weight_bits)
        self.observing = False
        self.layers = [m for _, m in quant_modules(model)]
        self._hooks = [q.register_forward_pre_hook(self._observe) for q in activation_quantizers(model)]

    def _observe(self, quantizer: nn.Module, args: tuple) -> None:
        if not (self.observing and quantizer.training and args and torch.is_tensor(args[0])):
            return
        with torch.no_grad():
            cur = args[0].detach().abs().max().reshape(quantizer.amax.shape).clamp_min(1e-8)
            quantizer.amax = self.momentum * quantizer.amax + (1 - self.momentum) * cur

    @torch.no_grad()
    def sync_weights(self) -> None:
        for m in self.layers:
            q = m.weight_quantizer
            if not _enabled(q) or q.amax is None:
                continue
            w = m.weight.detach().abs()
            dims = tuple(range(1, w.dim()))
            q.amax = (w.amax(dim=dims) * self.weight_scale).reshape(q.amax.shape).clamp_min(1e-8)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


# -- training -----------------------------------------------------------------------------------
@dataclass
class TrainLog:
    steps: int = 0
    seconds: float = 0.0
    first_loss: float | None = None
    last_loss: float | None = None
    terms: dict[str, float] = field(default_factory=dict)  # mean of the last 10% of steps
    lmr_weights: dict[str, float] | None = None
    spark: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batch(train: Any, cfg: QDRConfig, salt: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    return stack_batch(train, batch_indices(len(train), cfg.batch_size, cfg.seed + salt, step), step)


# pool rounds of each phase: fine-tuning draws rounds 1, 2, ..., QAT rounds QAT_ROUNDS + 1, ... (round 0 is the
# pool the run loaded, restored afterwards for the PTQ baseline's calibration and the ablation's variants)
QAT_ROUNDS = 100_000


def pool_hooks(train: Any, every: int, steps: int, first_round: int = 0) -> list[Every]:
    """The hook that replaces ``train``'s pool by round ``first_round + step // every`` every ``every`` of the
    ``steps`` steps (not after the last); none when ``every`` is 0 or the dataset holds a fixed pool."""
    if not every or not hasattr(train, "resample"):
        return []

    def at(step: int) -> None:
        if step < steps:
            train.resample(first_round + step // every)

    return [Every(every, at, changes_data=True)]


@contextlib.contextmanager
def fresh_pools(train: Any, every: int) -> Iterator[None]:
    """Put ``train``'s first pool (round 0) back however the training inside ended."""
    try:
        yield
    finally:
        if every and hasattr(train, "resample"):
            train.resample(0)


def finetune_fp32(model: nn.Module, train: Any, cfg: QDRConfig, show_progress: bool = True,
                  log: Callable[[str], None] = lambda s: None, compute: Compute = CPU,
                  select: Selection | None = None) -> TrainLog:
    """End-to-end FP32 fine-tuning of the assembled hybrid (Charbonnier + optional DCT term), in place, on
    ``compute``'s device (autocast as it says); the model is back on the CPU afterwards, for export. With
    ``select``, the model keeps the checked state (every ``cfg.select_every`` steps, its starting weights
    included) that scores best on it."""
    out = TrainLog()
    steps = cfg.finetune_steps
    if steps == 0:
        model.eval()
        return out
    torch.manual_seed(cfg.seed)
    compute.module(model).train()
    forward = compute.forward_of(model)
    hooks = pool_hooks(train, cfg.resample_every, steps)
    best = BestState(model, select) if (select is not None and cfg.select_every > 0) else None
    if best is not None:
        best.offer(0)
        hooks.append(Every(cfg.select_every, best.offer, at_end=True))
    loop = Loop("fine-tune FP32", Schedule(steps, cfg.lr, warmup=min(20, steps // 10)),
                torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0), grad_clip=cfg.grad_clip or None,
                show_progress=show_progress, info=lambda ema, terms: f"loss {terms['rec']:.4f}", compute=compute,
                hooks=hooks)

    def step_fn(step: int, b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        deg, clean = b
        loss = reconstruction_loss(forward(deg), clean, cfg.dct_weight)
        return loss, {"rec": loss}

    try:
        with fresh_pools(train, cfg.resample_every):
            res = loop.run(lambda step: _batch(train, cfg, 101, step), step_fn)
    finally:
        model.cpu()
    out.steps, out.seconds = steps, res.seconds
    out.first_loss, out.last_loss = res.first_loss, res.last_loss
    out.terms = {"rec": res.terms["rec"]}
    if best is not None:
        best.restore()
        out.extra["selection"] = best.to_dict()
    model.eval()
    return out


def quantized_student(teacher: nn.Module, train: Any, cfg: QDRConfig,
                      compute: Compute = CPU) -> tuple[nn.Module, TrainLog]:
    """A fake-quant copy of the frozen FP32 ``teacher``: weights clipped, BatchNorm recalibrated, quantizers
    inserted at the config's placement and calibrated (max) on training batches, on ``compute``'s device."""
    require_modelopt()
    torch.manual_seed(cfg.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    clip_weights(student, cfg.weight_clip)
    calib = [compute.tensor(_batch(train, cfg, 202, i)[0]) for i in range(cfg.calib_batches)]
    n_bn = recalibrate_batchnorm(student, calib)
    bits = cfg.weight_bits or 8
    student = quantize_model(student, calib, cfg.keep_fp, placement_for("", cfg.placement), bits)
    return student, TrainLog(extra={"batchnorm_layers_recalibrated": n_bn, "weight_bits": bits,
                                    **quant_summary(student)})


def _qat_terms(student: nn.Module, cfg: QDRConfig) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The loss terms' LMR weights and SPARK policy (each when the config asks for it), and the param groups."""
    names = ["rec"] + (["kd"] if cfg.kd != "none" else []) + (["ckd"] if cfg.conf_kd else []) + (
        ["spark"] if cfg.spark else [])
    lmr = MagnitudeReweighting(names) if (cfg.lmr and len(names) > 1) else None
    groups: list[dict[str, Any]] = [{"params": [p for p in student.parameters() if p.requires_grad],
                                     "lr": cfg.qat_lr, "weight_decay": 0.0}]
    if lmr is not None:
        groups.append({"params": list(lmr.parameters()), "lr": cfg.lmr_lr, "weight_decay": 0.0})
    spark = None
    if cfg.spark:
        from ens.finalize.spark import SparkTrainer

        spark = SparkTrainer(seed=cfg.seed)
    return lmr, spark, groups


def qdr_train(teacher: nn.Module, train: Any, cfg: QDRConfig, show_progress: bool = True,
              description: str = "QAT (QDR)", compute: Compute = CPU,
              select: Selection | None = None) -> tuple[nn.Module, TrainLog]:
    """Quantize a copy of the FP32 ``teacher`` and train it with QDR on ``compute``'s device; returns (fake-quant
    student, log), both networks back on the CPU. With ``select``, the student is the checked state (every
    ``cfg.select_every`` steps, the calibrated start included) that scores best on its pool."""
    compute.module(teacher)
    try:
        return _qdr_train(teacher, train, cfg, show_progress, description, compute, select)
    finally:
        teacher.cpu()


@dataclass
class Selection:
    """What the checkpoints of fine-tuning and QAT are scored on (training images only, never the held-out split)
    and the task whose metric scores them. ``by="whole"``: (degraded, clean) pairs of whole training images, each
    of its own size; ``by="patches"``: pairs of training-image patches drawn apart from the training pool."""

    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]
    task: Any
    by: str = "patches"

    @property
    def batch_size(self) -> int:
        return 8 if self.by == "patches" else 1  # whole images differ in size

    def describe(self) -> str:
        if self.by == "patches":
            return f"PSNR on {len(self.pairs)} training-image patches drawn apart from the training pool"
        n = len(self.pairs)
        return f"PSNR on {n} whole training image{'s' if n != 1 else ''}"


class BestState:
    """The best-scoring state of a module among those offered to :meth:`offer`, kept on the CPU."""

    def __init__(self, model: nn.Module, select: Selection) -> None:
        self.model, self.select = model, select
        self.by_step: dict[int, float] = {}
        self.step: int | None = None
        self._state: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def offer(self, step: int) -> float:
        from ens.evaluate import evaluate

        score = evaluate(self.model, self.select.pairs, self.select.task, self.select.batch_size,
                         with_ssim=False).psnr
        self.by_step[step] = round(score, 4)
        if self.step is None or score > self.by_step[self.step]:
            self.step = step
            self._state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        return score

    def restore(self) -> None:
        if self._state is not None:
            self.model.load_state_dict(self._state)

    def to_dict(self) -> dict[str, Any]:
        size = {"pool_patches": len(self.select.pairs)} if self.select.by == "patches" else {
            "images": len(self.select.pairs), "sizes": [list(p[0].shape[-2:]) for p in self.select.pairs]}
        return {"by": self.select.by, **size, "psnr_by_step": dict(self.by_step), "picked_step": self.step}


def _qdr_train(teacher: nn.Module, train: Any, cfg: QDRConfig, show_progress: bool, description: str,
               compute: Compute, select: Selection | None = None) -> tuple[nn.Module, TrainLog]:
    student, log = quantized_student(teacher, train, cfg, compute)
    steps = cfg.qat_steps
    if steps == 0:
        return student.cpu().eval(), log
    best = BestState(student, select) if (select is not None and cfg.select_every > 0) else None
    if best is not None:
        best.offer(0)
    bits = log.extra["weight_bits"]
    lmr, spark, groups = _qat_terms(student, cfg)
    opt = torch.optim.AdamW(groups)
    sched = RangeSchedule(student, weight_bits=bits)
    obs_until = int(round(cfg.observer_freeze * steps))
    fq_until = int(round(cfg.fakequant_freeze * steps))
    student.train()
    last: dict[str, Any] = {}

    def step_fn(step: int, b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sched.observing = step < obs_until
        deg, clean = b
        with torch.no_grad():
            t_out, t_lat = teacher(deg, return_latent=True)
        s_out, s_lat = student(deg, return_latent=True)
        losses: dict[str, torch.Tensor] = {"rec": reconstruction_loss(s_out, clean, cfg.dct_weight)}
        if cfg.kd == "latent":
            losses["kd"] = latent_kd(s_lat, t_lat)
        elif cfg.kd == "output":
            losses["kd"] = output_kd(s_out, t_out)
        if cfg.conf_kd:
            losses["ckd"] = confidence_kd(s_out, t_out, clean)
        if spark is not None:
            losses["spark"] = weighted_output_kd(s_out, t_out, spark.weights(clean, s_out, t_out))
        if lmr is not None:
            total = lmr(losses)
        else:
            total = losses["rec"] + cfg.kd_weight * sum((v for k, v in losses.items() if k != "rec"),
                                                       torch.zeros((), device=deg.device))
        last.update(deg=deg, clean=clean, rec=float(losses["rec"].detach()))
        return total, losses

    def after_step(step: int) -> None:
        clip_weights(student, cfg.weight_clip)
        if step < fq_until:
            sched.sync_weights()
        if spark is not None:
            with torch.no_grad():
                after = reconstruction_loss(student(last["deg"]), last["clean"], cfg.dct_weight)
            spark.update(last["rec"] - float(after))

    def info(_ema: float, terms: dict[str, float]) -> str:
        return f"rec {terms['rec']:.4f}" + (f" kd {terms['kd']:.4f}" if "kd" in terms else "")

    hooks = pool_hooks(train, cfg.qat_resample_every, steps, QAT_ROUNDS)
    if best is not None:
        hooks.append(Every(cfg.select_every, best.offer, at_end=True))
    loop = Loop(description, Schedule(steps, cfg.qat_lr), opt, clip_params=groups[0]["params"],
                grad_clip=cfg.grad_clip or None, after_step=after_step, show_progress=show_progress, info=info,
                compute=compute, hooks=hooks)
    try:
        with fresh_pools(train, cfg.qat_resample_every):
            res = loop.run(lambda step: _batch(train, cfg, 303, step), step_fn)
    finally:
        sched.close()
        student.cpu()
    log.steps, log.seconds = steps, res.seconds
    log.first_loss, log.last_loss = res.first_loss, res.last_loss
    log.terms = {k: v for k, v in res.terms.items() if k != "loss"}
    log.lmr_weights = lmr.weights() if lmr is not None else None
    log.spark = spark.summary() if spark is not None else None
    log.extra.update(observer_frozen_at_step=obs_until, fakequant_frozen_at_step=fq_until)
    if best is not None:
        best.restore()
        log.extra["selection"] = best.to_dict()
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return student, log


# The QAT variants of ``--ablate``, each with the same step budget as the full run.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_kd": {"kd": "none", "lmr": False, "conf_kd": False, "spark": False},
    "kd_output": {"kd": "output"},
    "no_lmr": {"lmr": False},
    "qdr": {},
}
