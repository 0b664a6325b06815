"""Do ONNX Runtime's fused u8 x s8 kernels saturate on this CPU? 8-bit against 7-bit weight ranges.

    python bench/bench_int8_saturation.py [--final bench/results/final] [--zoo bench/results/zoo/denoise-tiny]

Takes a finalize's FP32 weights (``model_fp32.safetensors`` and the arch in ``report.json``), inserts the
``onnx_int8`` placement's fake quantizers with 8- and with 7-bit weight ranges (max calibration on
training patches, no QAT), exports each with U8 activations, and prints one JSON object: for each, ORT
against the fake-quant torch model on held-out patches, with all optimizations (fused QLinearConv) and
with QDQ fusion off (every Q/DQ as written). Where the fused 8-bit error is far above the unfused one,
the kernels saturate (``profilers.ort_cpu.int8_pairs_saturate``). Needs ``ens[qat]``; never run by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--final", default="bench/results/final", help="an ens finalize --out folder")
    ap.add_argument("--zoo", default=None, help="zoo folder (default: the one the report names)")
    ap.add_argument("--patches", type=int, default=8)
    args = ap.parse_args()

    from ens.data import load_pairs
    from ens.finalize import export as ex
    from ens.finalize.pipeline import _load_weights
    from ens.finalize.qat import quantize_model
    from ens.finalize.qdq_uint8 import activations_to_uint8
    from ens.tasks import get_task
    from ens.zoo import Zoo
    from profilers.ort_cpu import cpu_model, int8_pairs_saturate

    final = Path(args.final)
    r = json.loads((final / "report.json").read_text())
    zoo = Zoo.load(Path(args.zoo or r["zoo_dir"]))
    net = zoo.build(r["trial"]["arch"])
    _load_weights(net, final / "model_fp32.safetensors")
    net.eval()
    task, patch = get_task(r["task"]), int(zoo.manifest.patch_size)
    torch.manual_seed(0)
    val = load_pairs(task, None, "val", patch_size=patch, seed=0, num_patches=args.patches)
    train = load_pairs(task, None, "train", patch_size=patch, seed=0, num_patches=args.patches)
    x = torch.stack([val[i][0] for i in range(len(val))])
    calib = [torch.stack([train[i][0] for i in range(len(train))])]
    res: dict = {"cpu": cpu_model(), "predicted_to_saturate": int8_pairs_saturate(), "arch": r["trial"]["arch"],
                 "patches": len(val), "patch_size": patch}
    with tempfile.TemporaryDirectory() as d:
        for bits in (8, 7):
            with contextlib.redirect_stderr(io.StringIO()):
                q = quantize_model(copy.deepcopy(net), calib, placement="ort", weight_bits=bits).eval()
                path = Path(d) / f"int8_w{bits}.onnx"
                ex.export_int8(q, (1, 3, patch, patch), path)
            activations_to_uint8(path)
            res[f"weight_bits_{bits}"] = {"fused": ex.ort_vs_torch(q, path, x),
                                          "qdq_as_written": ex.ort_vs_torch(q, path, x, fuse_qdq=False)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
