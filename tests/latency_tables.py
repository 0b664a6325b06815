"""Latency tables for the tests' micro zoos, written where ``lut:ort-cpu`` looks for them."""

from __future__ import annotations

import json


def micro_table(zoo, shape, verify_pct: float | None) -> None:
    """A latency table for the zoo's U-Net at ``shape`` where ``lut:ort-cpu`` looks for one (costs made up: 1 ms
    of skeleton, 0.1 ms a block, 0.3 for T), with a verification where ``ens calibrate --verify`` would keep it."""
    from blocks.unet import stage_layout
    from profilers.lut import LatencyTable
    from profilers.registry import get_profiler

    ort = get_profiler("ort-cpu")
    cfg, kinds = zoo.config, tuple(zoo.manifest.kinds)
    stages = {s.name: s.depth for s in stage_layout(cfg)}
    table = LatencyTable(profiler=ort.spec, device=ort.device, precision="fp32", input_shape=shape,
                         config=cfg.to_dict(), kinds=kinds, stages=stages, skeleton_ms=1.0,
                         costs={s: {k: 0.3 if k == "T" else 0.1 for k in kinds} for s in stages})
    path = table.save(table.default_path())
    if verify_pct is not None:
        d = json.loads(path.read_text())
        d["verify"] = {"archs": 20, "median_abs_error_pct": verify_pct, "within_10pct": 0.9}
        path.write_text(json.dumps(d))
