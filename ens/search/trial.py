"""What one search trial computes, in whichever process Ray puts it.

``TrialEvaluator(arch_string) -> Outcome`` assembles the hybrid from the zoo (no retraining, or
``finetune_steps`` of end-to-end Charbonnier fine-tuning), scores it on the held-out split with the
task's metric conventions, counts params/MACs/transformer blocks, gets its latency from the
profiler (measured, table-predicted, or the proxy), and renders a sample image (degraded |
restored | target) as the trial's artifact. Everything it needs travels inside the object (zoo
weights, validation tensors), so it runs on any Ray node.
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
from ens.evaluate import evaluate
from ens.search.objectives import score
from ens.tasks import get_task
from ens.zoo.manifest import ZooManifest
from ens.zoo.store import Zoo
from search_spaces.arch import Arch
from studies.runner import Outcome


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
        arch = Arch.parse(arch_text)
        zoo = self.zoo()
        cfg = zoo.config
        net = zoo.build(arch)
        if ctx.finetune_steps > 0:
            _finetune(net, ctx)
        task = get_task(ctx.task)
        q = evaluate(net, ctx.val, task)
        lat = profile_arch(arch, ctx.profiler, cfg, ctx.shape)
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
        attrs = {
            "arch": str(arch),
            "arch_hash": arch.hash,
            "zoo_id": zoo.zoo_id,
            "latency_profiler": ctx.profiler,
            "latency_device": lat.device,
            "latency_shape": "x".join(map(str, ctx.shape)),
            "latency_source": lat.source,
            "latency_unit": "ms" if lat.is_time else str(lat.details.get("unit", "count")),
            "latencies": [{"profiler": ctx.profiler, "shape": list(ctx.shape), **lat.to_dict()}],
            "finetune_steps": ctx.finetune_steps,
            "eval_s": round(time.monotonic() - t0, 3),
            "worker": f"{socket.gethostname()}:{os.getpid()}",  # which node and process evaluated it
            **ctx.extra_attrs,
        }
        return Outcome(metrics=metrics, attrs=attrs, artifacts={"sample.png": sample_png(net, ctx.val[0])})


def _finetune(net: torch.nn.Module, ctx: TrialContext) -> None:
    from ens.finetune import finetune

    finetune(net, ctx.train, ctx.finetune_steps, ctx.seed)


@torch.no_grad()
def sample_png(net: torch.nn.Module, pair: tuple[torch.Tensor, torch.Tensor]) -> bytes:
    """degraded | restored | target, side by side, as PNG bytes."""
    from PIL import Image

    deg, clean = pair
    out = net(deg.unsqueeze(0))[0].clamp(0, 1)
    row = torch.cat([deg, out, clean], dim=2)
    img = (row.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
