"""One device everywhere: --device/--amp resolution, the CUDA plumbing on a machine without CUDA, data-parallel
teacher training (two Gloo processes on the CPU), device-neutral weights, and the CLI's one-line errors."""

from __future__ import annotations

import pytest
import torch

from ens.compute import CPU, Compute, make_compute, model_device, resolve_amp, resolve_device
from ens.errors import EnsError


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as on a machine with two GPUs, the second without bf16 (only what resolution asks)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    state = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["bf16"])
    return state


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_amp("auto", torch.device("cpu")) is None, "no autocast on the CPU by default"
    c = make_compute("auto", "auto")
    assert c == Compute(device=torch.device("cpu"), amp=None) and not c.prefetching


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_is_a_one_line_error(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EnsError, match=r"CUDA is not available here: .*; use --device cpu") as e:
        resolve_device(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:", "tpu:0", "cuda:-1"])
def test_unknown_devices_are_refused(spec):
    with pytest.raises(EnsError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_auto_and_indices_with_cuda(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(EnsError, match=r"2 CUDA device\(s\) \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    dev = torch.device("cuda", 0)
    assert resolve_amp("auto", dev) is torch.bfloat16
    fake_cuda["bf16"] = False
    assert resolve_amp("auto", dev) is torch.float16, "fp16 (with a scaler) where bf16 is missing"
    assert resolve_amp("off", dev) is None
    assert Compute(device=dev).prefetching, "batches are prefetched on CUDA"


def test_cuda_compute_lets_cudnn_pick_its_kernels(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    make_compute("cpu")
    assert torch.backends.cudnn.benchmark is False
    assert make_compute("cuda").amp is torch.bfloat16
    assert torch.backends.cudnn.benchmark is True


def test_amp_choices():
    cpu = torch.device("cpu")
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(EnsError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", cpu)
    with pytest.raises(EnsError, match="expected one of auto, bf16, fp16, off"):
        resolve_amp("fp8", cpu)
    assert Compute(amp=torch.float16).grad_scaler() is not None
    assert Compute(amp=torch.bfloat16).grad_scaler() is None and CPU.grad_scaler() is None


def test_compute_moves_modules_and_batches():
    net = torch.nn.Conv2d(3, 4, 3)
    c = Compute()
    assert c.module(net) is net and model_device(net) == torch.device("cpu")
    x = c.tensor(torch.rand(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert model_device(None) == torch.device("cpu") and model_device(torch.nn.ReLU()) == torch.device("cpu")
    assert Compute(compile=True).forward_of(net) is not net, "--compile wraps the forward"
    assert "bf16 autocast" in Compute(amp=torch.bfloat16).describe()
    assert Compute(amp=torch.bfloat16).to_dict() == {"device": "cpu", "amp": "bfloat16", "channels_last": True,
                                                      "compile": False}


# --------------------------------------------------------------------------- data-parallel teacher (Gloo, CPU)


def _pairs(n: int = 12, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    clean = torch.rand(n, 3, size, size, generator=g)
    return [(c.roll(1, -1) * 0.8 + 0.1, c) for c in clean]


def test_two_gloo_processes_train_the_teacher_as_one(tmp_path, micro_cfg):
    """DDP over 2 processes, each with half of every batch, ends at the single process's weights."""
    from blocks.unet import HybridUNet
    from ens.zoo.parallel import TeacherJob, free_port, train_teacher_parallel
    from ens.zoo.teacher import TeacherRecipe, train_teacher

    recipe = TeacherRecipe(steps=5, batch_size=4, warmup=1, lr=2e-3)
    data = _pairs()
    torch.manual_seed(0)
    one = HybridUNet(micro_cfg)
    two = HybridUNet(micro_cfg)
    two.load_state_dict(one.state_dict())
    train_teacher(one, data, recipe, 3, tmp_path / "one.safetensors", show_progress=False)

    job = TeacherJob(micro_cfg, data, recipe, 3, tmp_path / "two.safetensors", tmp_path / "two.json", CPU,
                     free_port(), show_progress=False)
    stats = train_teacher_parallel(two, 2, job)
    assert stats["train_loss"] == stats["train_loss"]
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    moved = max(float((a[k] - HybridUNet(micro_cfg).state_dict()[k]).abs().max()) for k in a if "output" in k)
    assert moved > 1e-4, "the teacher trained (its output conv left zero)"
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 2e-5, f"data-parallel and single-process weights differ by {worst}"


def test_uneven_batch_and_missing_gpus_are_refused(tmp_path, micro_cfg, fake_cuda):
    from blocks.unet import HybridUNet
    from ens.zoo.parallel import check_world
    from ens.zoo.teacher import TeacherRecipe, train_teacher

    with pytest.raises(EnsError, match="does not split evenly over 3 processes"):
        train_teacher(HybridUNet(micro_cfg), _pairs(), TeacherRecipe(steps=1, batch_size=4), 0,
                      tmp_path / "c.safetensors", show_progress=False, world=3)
    with pytest.raises(EnsError, match=r"--gpus 4: this machine has 2 CUDA device\(s\)"):
        check_world(4, Compute(device=torch.device("cuda", 0)))
    check_world(2, Compute(device=torch.device("cuda", 0)))


def test_zoo_build_with_two_processes_matches_one(tmp_path, micro_recipe, micro_zoo):
    """``ens zoo build --gpus 2``'s code path (Gloo on the CPU here): the same teacher as the one-process build,
    and a complete zoo whose manifest records how it was trained."""
    from blocks import UNetConfig
    from ens.zoo.build import build_zoo
    from ens.zoo.store import Zoo

    cfg = UNetConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))
    lines: list[str] = []
    out = build_zoo("deblur", "tiny", out_root=tmp_path, config=cfg, recipe=micro_recipe, show_progress=False,
                    log=lines.append, gpus=2)
    ref, got = Zoo.load(micro_zoo), Zoo.load(out)
    assert got.manifest.build["gpus"] == 2 and got.manifest.build["compute"]["device"] == "cpu"
    assert any("teacher data-parallel over 2 processes" in s for s in lines)
    teacher = [k for k in ref.state if ".choices.T." in k]
    assert teacher
    worst = max(float((ref.state[k] - got.state[k]).abs().max()) for k in teacher)
    assert worst < 2e-5, f"teacher weights differ by {worst}"


# --------------------------------------------------------------------------- device-neutral weights


def test_zoo_weights_load_on_any_device(micro_zoo):
    """A zoo is safetensors of CPU tensors: it loads into a network wherever it is; on CUDA, tests/test_gpu.py
    checks the outputs match."""
    from safetensors import safe_open

    from ens.zoo.manifest import WEIGHTS
    from ens.zoo.store import Zoo

    with safe_open(str(micro_zoo / WEIGHTS), "pt", device="cpu") as f:
        assert all(f.get_tensor(k).device.type == "cpu" for k in list(f.keys())[:5])
    from search_spaces.arch import Arch

    net = CPU.module(Zoo.load(micro_zoo).build(Arch.uniform("T")))
    assert model_device(net).type == "cpu"


# --------------------------------------------------------------------------- the CLI


class _Res:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code, self.output = exit_code, output


@pytest.fixture
def cli(capsys):
    """``ens ARGS`` through the real entry point (its one-line error printer): exit code and all output."""
    from ens.cli import main

    def run(*args: str) -> _Res:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return _Res(code, out.out + out.err)

    return run


@pytest.mark.parametrize("args", [
    ("zoo", "build", "--device", "cuda", "--steps", "1"),
    ("search", "--device", "cuda:0", "--workers", "0", "--trials", "1"),
    ("finalize", "study.db", "--export", "onnx_fp32", "--device", "cuda"),
])
def test_cuda_on_this_machine_is_one_line_exit_2(tmp_path, monkeypatch, args, cli):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert "CUDA is not available here" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "final").exists(), "nothing written"


def test_search_device_rules_for_ray(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    res = cli("search", "--device", "cuda", "--workers", "1", "--trials", "1")
    assert res.exit_code == 2 and "needs --gpus-per-trial" in res.output
    res = cli("search", "--device", "cpu", "--gpus-per-trial", "1", "--trials", "1")
    assert res.exit_code == 2 and "would hold GPUs they do not use" in res.output
    res = cli("zoo", "build", "--device", "cpu", "--gpus", "2")
    assert res.exit_code == 2 and "--gpus 2 trains on 2 CUDA devices" in res.output


def test_finalize_hub_device_and_the_old_spelling(monkeypatch):
    from ens.cli.finalize_cmd import split_device

    notes: list[str] = []
    monkeypatch.setattr("ens.cli.finalize_cmd.log_line", notes.append)
    assert split_device("cuda:1", "Samsung Galaxy S24", "qnn_int8") == ("cuda:1", "Samsung Galaxy S24")
    assert split_device("Samsung Galaxy S24", None, "qnn_int8") == ("auto", "Samsung Galaxy S24")
    assert len(notes) == 1 and "deprecated: use --hub-device" in notes[0]
    with pytest.raises(EnsError, match="the AI Hub device is --hub-device"):
        split_device("Samsung Galaxy S24", None, "onnx_int8")


def test_every_training_verb_documents_device(cli):
    for verb in (("zoo", "build"), ("search",), ("finalize",)):
        out = cli(*verb, "--help").output
        assert "--device" in out and "--amp" in out, verb
    assert "--gpus" in cli("zoo", "build", "--help").output
    assert "--hub-device" in cli("finalize", "--help").output


def test_cuda_only_lines_on_a_fake_gpu(fake_cuda, monkeypatch, micro_cfg):
    """What runs only on CUDA, with torch.cuda faked: names, pinned prefetch, DDP's device ids."""
    import torch.nn.parallel

    from blocks.unet import HybridUNet
    from ens.compute import Prefetcher
    from ens.search.trial import trial_device_label
    from ens.zoo import teacher

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    gpu = Compute(device=torch.device("cuda", 1), amp=torch.bfloat16)
    assert gpu.describe() == "cuda:1 (NVIDIA H200), bf16 autocast"
    assert trial_device_label(torch.device("cuda", 0)).startswith("cuda:0 (NVIDIA H200")
    assert trial_device_label(torch.device("cpu")) == "cpu"

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t.shape) or t)
    moved = []
    monkeypatch.setattr(Compute, "tensor", lambda self, t: moved.append(self.cuda) or t)
    fetch = Prefetcher(lambda step: (torch.full((2,), float(step)),), gpu, 0, 3)
    got = [float(fetch.get(s)[0][0]) for s in range(3)]
    assert got == [0.0, 1.0, 2.0] and len(pinned) == 3 and moved == [True] * 3

    seen = {}

    class FakeDDP(torch.nn.Module):
        def __init__(self, module, device_ids=None):
            super().__init__()
            seen["ids"] = device_ids

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    teacher._data_parallel(HybridUNet(micro_cfg), gpu)
    assert seen["ids"] == [1], "each rank's DDP wraps its own GPU"
    teacher._data_parallel(HybridUNet(micro_cfg), CPU)
    assert seen["ids"] is None


def _start_ddp_driver(folder, preexec):
    """``tests/ddp_driver.py`` running two Gloo ranks, once rank 0 has written its first checkpoint:
    (process, rank pids)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.ddp_driver", str(folder), "100000"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec)
    ckpt = folder / "teacher.ckpt.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ckpt.is_file():
        proc.kill()
        pytest.fail("the ranks did not start training and checkpointing: " + proc.communicate()[0][-2000:])
    ranks = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                            text=True).stdout.split()]
    assert len(ranks) >= 2
    return proc, ranks


def _running(pids, within_s):
    """The pids still running (not zombies) after waiting up to ``within_s`` for them to go."""
    import os
    import time

    def alive(pid):
        try:
            os.kill(pid, 0)
            return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            return False

    deadline = time.monotonic() + within_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def test_ctrl_c_stops_every_rank_and_the_teacher_resumes(tmp_path):
    """SIGINT to the parent of a two-process (Gloo) teacher run: the ranks are stopped (rank 0 saving its
    checkpoint), none is left behind, and a second run resumes from that checkpoint."""
    import os
    import signal

    from ens.training import checkpoint_step
    from tests.ddp_driver import CFG, job
    from tests.interrupts import sigint_reachable

    ckpt = tmp_path / "teacher.ckpt.safetensors"
    proc, ranks = _start_ddp_driver(tmp_path, sigint_reachable)
    try:
        os.kill(proc.pid, signal.SIGINT)  # the parent only, as `kill -INT` would
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "done" not in out
    assert not _running(ranks, 0.5), "a rank process was left running"
    stopped = checkpoint_step(ckpt)
    assert 0 < stopped < 100000
    from blocks.unet import HybridUNet
    from ens.zoo.parallel import train_teacher_parallel

    resumed = job(tmp_path, stopped + 2)
    stats = train_teacher_parallel(HybridUNet(CFG), 2, resumed)
    assert checkpoint_step(ckpt) == stopped + 2 and stats["train_loss"] == stats["train_loss"]


def test_a_killed_parent_leaves_no_rank_behind(tmp_path):
    """The parent of a two-rank run dies (SIGKILL, OOM killer) and it was started in the background, so the ranks
    inherited an ignored SIGINT: torch's parent-death signal (SIGINT) must still stop them, not leave them
    training (and holding GPUs) until the collectives time out."""
    import os
    import signal

    def background_launch():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a non-interactive shell does

    proc, ranks = _start_ddp_driver(tmp_path, background_launch)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)  # not communicate(): a rank left running holds the output pipe open
        left = _running(ranks, 30)
    finally:
        for pid in _running(ranks, 0):
            os.kill(pid, signal.SIGKILL)
        proc.stdout.close()
    assert not left, f"rank processes {left} outlived their killed parent"
