"""Checks that need a CUDA GPU (skipped elsewhere; the CPU suite covers their plumbing in test_compute.py and
test_ssm.py): a zoo built on the CPU gives the same outputs on the GPU, the real mamba-ssm kernels agree with
the exportable scan, and the teacher trains under bf16 autocast with device-neutral checkpoints."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_zoo_on_the_gpu_gives_the_same_outputs(micro_zoo):
    from ens.zoo.store import Zoo
    from search_spaces.arch import Arch

    zoo = Zoo.load(micro_zoo)
    x = torch.rand(2, 3, 32, 32)
    for text in ("enc:T,T,T|lat:T|dec:T,T,T|ref:T", "enc:M,E,T|lat:S|dec:L,T,M|ref:E"):
        arch = Arch.parse(text)
        cpu = zoo.build(arch).eval()
        gpu = zoo.build(arch).cuda().eval()
        with torch.no_grad():
            err = float((cpu(x) - gpu(x.cuda()).cpu()).abs().max())
        assert err < 1e-4, f"{text}: CPU and GPU outputs differ by {err}"


def test_mamba_ssm_kernels_match_the_exportable_scan(monkeypatch):
    pytest.importorskip("mamba_ssm")
    from blocks import ssm
    from tests.test_ssm import mamba1_inputs, ssd_inputs

    ssm._load_kernel.cache_clear()
    assert ssm.select_kernel("selective_scan", torch.device("cuda")) is not None, "mamba-ssm imports but no kernel"
    cuda = {k: v.cuda() for k, v in mamba1_inputs(l=256).items()}
    kernel = ssm.selective_scan(**cuda, delta_softplus=True)
    cuda_ssd = {k: v.cuda() for k, v in ssd_inputs(l=256).items()}
    kernel_ssd = ssm.ssd_scan(**cuda_ssd, chunk_size=64)
    monkeypatch.setattr(ssm, "select_kernel", lambda name, device: None)  # the exportable PyTorch path
    ref = ssm.selective_scan(**cuda, delta_softplus=True)
    ref_ssd = ssm.ssd_scan(**cuda_ssd, chunk_size=64)
    for a, b in ((kernel, ref), (kernel_ssd, ref_ssd)):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) < 2e-3 * scale + 1e-4


def test_teacher_trains_on_cuda_with_bf16_and_saves_cpu_tensors(tmp_path, micro_cfg):
    from safetensors import safe_open

    from blocks.unet import HybridUNet
    from ens.compute import make_compute
    from ens.zoo.teacher import TeacherRecipe, train_teacher
    from tests.test_compute import _pairs

    compute = make_compute("cuda", "auto")
    assert compute.amp in (torch.bfloat16, torch.float16)
    net = HybridUNet(micro_cfg)
    stats = train_teacher(net, _pairs(), TeacherRecipe(steps=6, batch_size=4, warmup=1), 0,
                          tmp_path / "t.safetensors", show_progress=False, compute=compute)
    assert stats["train_loss"] == stats["train_loss"]
    assert next(net.parameters()).is_cuda
    with safe_open(str(tmp_path / "t.safetensors"), "pt", device="cpu") as f:
        assert f.get_tensor(next(iter(f.keys()))).device.type == "cpu"
