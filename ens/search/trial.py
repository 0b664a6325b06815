"""What one search trial computes, in whichever process Ray puts it.

``TrialEvaluator(arch_string) -> Outcome`` assembles the hybrid from the zoo (no retraining, or
``finetune_steps`` of end-to-end Charbonnier fine-tuning), scores it on the held-out split with the
task's metric conventions, counts params/MACs/transformer blocks, gets its latency from the
profiler (measured, table-predicted, or the proxy), renders a sample image as the trial's artifact
(the centre of a whole held-out image, ``sample_crop`` px a side: degraded | restored | target,
labelled with their PSNR) and writes the trial's Note (arch, kinds per slot, latency and its source,
zoo). Everything it needs travels inside the object (zoo weights, validation tensors, the sample
image), so it runs on any Ray node.
"""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from blocks.stats import count_macs, count_params
from ens.compute import Compute, make_compute, model_device
from ens.evaluate import evaluate
from ens.search.objectives import latency_label, latency_unit, score
from ens.tasks import Task, get_task
from ens.zoo.manifest import ZooManifest
from ens.zoo.store import Zoo
from profilers.result import PREDICTED, LatencyResult
from search_spaces.arch import Arch
from studies.runner import Outcome

SAMPLE_CROP = 256  # px a side of the sample image: large enough to judge a restoration, cheap to run


@dataclass
class TrialContext:
    manifest: dict[str, Any]
    zoo_state: dict[str, torch.Tensor]
    task: str
    val: list[tuple[torch.Tensor, torch.Tensor]]
    profiler: str
    shape: tuple[int, ...]
    objectives: list[str]
    ref_latency_ms: float | None = None
    score_alpha: float = 0.5
    finetune_steps: int = 0
    train: Any = None  # a dataset, only when finetune_steps > 0
    seed: int = 0
    threads: int = 1
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    sample: tuple[torch.Tensor, torch.Tensor] | None = None  # a whole held-out image; None: the first patch
    sample_crop: int = SAMPLE_CROP
    latency_error_pct: float | None = None  # the latency table's measured error, when one predicts
    precision: str | None = None  # the latency's precision (None: the profiler's default)
    device: str = "cpu"  # where the trial evaluates and fine-tunes; resolved in the worker ("auto": its GPU if any)
    amp: str = "auto"
    val_label: str = "held-out patches"  # what ``val`` is, in words (``--val whole``: whole held-out images)


class TrialEvaluator:
    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self._zoo: Zoo | None = None

    def zoo(self) -> Zoo:
        if self._zoo is None:
            self._zoo = Zoo(path=None, manifest=ZooManifest(**self.ctx.manifest), state=self.ctx.zoo_state)
        return self._zoo

    def __getstate__(self) -> dict[str, Any]:
        return {"ctx": self.ctx, "_zoo": None}

    def __call__(self, arch_text: str) -> Outcome:
        from ens.profiling import profile_arch

        ctx = self.ctx
        torch.set_num_threads(max(1, ctx.threads))
        t0 = time.monotonic()
        compute = make_compute(ctx.device, ctx.amp)
        arch = Arch.parse(arch_text)
        zoo = self.zoo()
        cfg = zoo.config
        net = compute.module(zoo.build(arch))
        if ctx.finetune_steps > 0:
            _finetune(net, ctx, compute)
        task = get_task(ctx.task)
        q = evaluate(net, ctx.val, task)
        lat = profile_arch(arch, ctx.profiler, cfg, ctx.shape, precision=ctx.precision)
        macs = lat.details.get("macs") or count_macs(net, ctx.shape)
        metrics: dict[str, float] = {
            "psnr": q.psnr,
            "ssim": q.ssim,
            "params": float(count_params(net)),
            "macs": float(macs),
            "transformer_count": float(arch.count(cfg, "T")),
        }
        if lat.median_ms is not None and lat.median_ms == lat.median_ms:
            metrics["latency"] = float(lat.median_ms)
        if "score" in ctx.objectives:
            if "latency" not in metrics or not ctx.ref_latency_ms:
                raise RuntimeError(f"profiler {ctx.profiler} gave no latency in ms, which 'score' needs")
            metrics["score"] = score(q.psnr, metrics["latency"], ctx.ref_latency_ms, ctx.score_alpha)
        pair = sample_pair(ctx)
        png = sample_png(net, pair, task)
        attrs = {
            "arch": str(arch),
            "arch_hash": arch.hash,
            "zoo_id": zoo.zoo_id,
            **self._latency_attrs(lat),
            "finetune_steps": ctx.finetune_steps,
            "val_label": ctx.val_label,
            "eval_device": trial_device_label(compute.device),
            "eval_s": round(time.monotonic() - t0, 3),
            "worker": f"{socket.gethostname()}:{os.getpid()}",  # which node and process evaluated it
            **ctx.extra_attrs,
        }
        what = f"the centre {pair[0].shape[-1]} px of a held-out image" if ctx.sample is not None else \
            "the first held-out patch"
        note = trial_note(arch, cfg, metrics, attrs, zoo.manifest, what)
        return Outcome(metrics=metrics, attrs=attrs, artifacts={"sample.png": png}, note=note)

    def _latency_attrs(self, lat: LatencyResult) -> dict[str, Any]:
        ctx = self.ctx
        unit = latency_unit(lat)
        err = ctx.latency_error_pct if lat.source == PREDICTED else None
        return {
            "latency_profiler": ctx.profiler,
            "latency_precision": lat.precision,
            "latency_device": lat.device,
            "latency_shape": "x".join(map(str, ctx.shape)),
            "latency_source": lat.source,
            "latency_unit": unit,
            "latency_label": latency_label(ctx.profiler, lat.source, unit, err),
            **({"latency_error_pct": err} if err is not None else {}),
            "latencies": [{"profiler": ctx.profiler, "shape": list(ctx.shape), **lat.to_dict()}],
        }


def _finetune(net: torch.nn.Module, ctx: TrialContext, compute: Compute) -> None:
    from ens.finetune import finetune

    finetune(net, ctx.train, ctx.finetune_steps, ctx.seed, compute=compute)


def trial_device_label(device: torch.device) -> str:
    """Where a trial ran: ``cpu``, or ``cuda:0 (GPU name, Ray GPU ids [..])`` inside a Ray task given GPUs."""
    if device.type != "cuda":
        return str(device)
    label = f"{device} ({torch.cuda.get_device_name(device)}"
    try:
        import ray

        if ray.is_initialized():
            label += f", Ray GPU ids {ray.get_gpu_ids()}"
    except Exception:  # not in a Ray worker
        pass
    return label + ")"


def load_sample(task: Task, data_dir: str | None, crop: int = SAMPLE_CROP) -> tuple[torch.Tensor, torch.Tensor]:
    """The first whole held-out image (degraded, clean), its centre at most ``crop`` px a side."""
    from ens.zoo.build import held_out_images

    return held_out_images(task, data_dir, 1, crop)[0]


def sample_pair(ctx: TrialContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre of ``ctx.sample``, ``ctx.sample_crop`` px a side at most and a multiple of 8 (what every
    U-Net takes); the first held-out patch when there is no sample image."""
    if ctx.sample is None:
        return ctx.val[0]
    deg, clean = ctx.sample
    h, w = deg.shape[-2:]
    side = min(ctx.sample_crop, h, w)
    side = max(8, side - side % 8)
    y, x = (h - side) // 2, (w - side) // 2
    return deg[..., y : y + side, x : x + side], clean[..., y : y + side, x : x + side]


@torch.no_grad()
def sample_png(net: torch.nn.Module, pair: tuple[torch.Tensor, torch.Tensor], task: Task | None = None) -> bytes:
    """degraded | restored | target, side by side under a label strip (with PSNR when ``task`` is given), as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    from ens.metrics import psnr

    deg, clean = pair
    was_training = net.training
    net.eval()
    out = net(deg.unsqueeze(0).to(model_device(net)))[0].clamp(0, 1).float().cpu()
    net.train(was_training)
    kw = task.metric_kwargs() if task is not None else {}
    labels = ["degraded", "restored", "target"]
    if task is not None:
        labels[:2] = [f"{name} {float(psnr(x[None], clean[None], **kw)):.2f} dB" for name, x in
                      (("degraded", deg), ("restored", out))]
    row = torch.cat([deg, out, clean], dim=2)
    img = Image.fromarray((row.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))
    strip = 20
    canvas = Image.new("RGB", (img.width, img.height + strip), "white")
    canvas.paste(img, (0, strip))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for i, text in enumerate(labels):
        draw.text((i * deg.shape[-1] + 4, 3), text, fill="black", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def trial_note(arch: Arch, cfg: Any, metrics: dict[str, float], attrs: dict[str, Any], manifest: ZooManifest,
               sample: str) -> str:
    """The trial's Note (Markdown): arch, kinds per slot, quality, latency and its source, zoo, sample."""
    from blocks.registry import block_kinds

    names = {k: v.name for k, v in block_kinds().items()}
    rows = "\n".join(f"| {slot} | {len(ks)} | {', '.join(f'{k} ({names.get(k, k)})' for k in ks)} |"
                      for slot, ks in arch.block_kinds(cfg).items())
    lat = metrics.get("latency")
    unit = attrs["latency_unit"]
    lat_text = "none" if lat is None else (f"{lat:.2f} ms" if unit == "ms" else f"{lat:g} {unit}")
    err = attrs.get("latency_error_pct")
    return (
        f"### `{arch}`\n\n"
        f"| slot | blocks | kinds |\n|---|---|---|\n{rows}\n\n"
        f"- **quality**: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
        f"({attrs.get('val_label', 'held-out patches')})\n"
        f"- **latency**: {lat_text}, {attrs['latency_source']} (`{attrs['latency_profiler']}`, "
        f"{attrs['latency_device']}, input {attrs['latency_shape']})"
        f"{f', table error ±{err:.1f}% against measurements' if err is not None else ''}\n"
        f"- **objective axis**: {attrs['latency_label']}\n"
        f"- **size**: {metrics['params']:.0f} params, {metrics['macs'] / 1e9:.3g} GMACs, "
        f"{metrics['transformer_count']:.0f} transformer block{'' if metrics['transformer_count'] == 1 else 's'}\n"
        f"- **zoo**: `{attrs['zoo_id']}` ({manifest.task}, preset {manifest.preset})\n"
        f"- **sample.png**: {sample}: degraded | restored | target\n"
    )
