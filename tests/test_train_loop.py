"""The one training loop: schedule, resume, hooks, persistent state, resampling."""

from __future__ import annotations

import pytest
import torch

from ens.errors import EnsError
from ens.train_loop import Checkpointing, Every, Loop, Schedule, resampling_hook


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return net, x, y


def _step(net, x, y):
    def step_fn(step: int) -> torch.Tensor:
        i = torch.arange(8) + (step * 8) % 56
        return ((net(x[i]) - y[i]) ** 2).mean()

    return step_fn


def _no_batches(step: int) -> tuple:
    return ()


def _run(loop: Loop, fn):
    """``loop.run`` with a step function that takes no batch (these problems index their own tensors)."""
    return loop.run(_no_batches, lambda step, _batch: fn(step))


def test_schedule_warms_up_then_decays_to_min_ratio():
    s = Schedule(steps=100, lr=1.0, warmup=10, min_ratio=0.1)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(99) < 0.11 and s.lr_at(99) >= 0.1
    assert Schedule(10, 0.5, min_ratio=1.0).lr_at(7) == pytest.approx(0.5)


def test_loop_learns_and_reports_terms():
    net, x, y = _problem()
    loop = Loop("fit", Schedule(200, 0.05), torch.optim.SGD(net.parameters(), lr=0.05), grad_clip=None,
                show_progress=False)
    step = _step(net, x, y)
    res = _run(loop, lambda s: (step(s), {"half": step(s) / 2}))
    assert res.last_loss < 0.01 * res.first_loss
    assert res.terms["half"] == pytest.approx(res.terms["loss"] / 2, rel=1e-5)


def test_interrupted_loop_resumes_to_the_same_weights_and_state(tmp_path):
    ref, x, y = _problem()
    _run(Loop("fit", Schedule(30, 0.01), torch.optim.AdamW(ref.parameters(), lr=0.01), show_progress=False),
         _step(ref, x, y))

    net, _, _ = _problem()
    ck = tmp_path / "c.safetensors"
    seen = []

    def loop_for(n):
        opt = torch.optim.AdamW(net.parameters(), lr=0.01)
        lp = Loop("fit", Schedule(30, 0.01), opt, checkpoint=Checkpointing(ck, {"net": net}, every_s=1e9),
                  show_progress=False, on_resume=seen.append)
        lp.hooks = [Every(10, lambda s: lp.state.setdefault("marks", []).append(s))]
        return lp

    lp = loop_for(30)
    base = _step(net, x, y)

    def stop_at_17(step):
        if step == 17:
            raise KeyboardInterrupt
        return base(step)

    with pytest.raises(KeyboardInterrupt):
        _run(lp, stop_at_17)
    assert ck.is_file()
    net2 = net
    with torch.no_grad():  # scramble: the resume must restore from the checkpoint, not keep memory
        for p in net2.parameters():
            p.add_(1.0)
    lp2 = loop_for(30)
    _run(lp2, base)
    assert seen == [17]
    assert lp2.state["marks"] == [10, 20, 30], "hook records survive the resume"
    for a, b in zip(ref.parameters(), net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_non_finite_loss_is_a_clear_error():
    net, x, y = _problem()
    loop = Loop("teacher", Schedule(5, 0.1), torch.optim.SGD(net.parameters(), lr=0.1), show_progress=False)
    with pytest.raises(EnsError, match="teacher: the loss became nan"):
        _run(loop, lambda s: net(x).sum() * float("nan"))


def test_resampling_hook_draws_the_round_of_the_step():
    class Pool:
        rounds: list[int] = []

        def resample(self, r: int) -> None:
            self.rounds.append(r)

    pool = Pool()
    hook, resume = resampling_hook(pool, 5)
    net, x, y = _problem()
    _run(Loop("fit", Schedule(17, 0.01), torch.optim.SGD(net.parameters(), lr=0.01), hooks=[hook],
              show_progress=False), _step(net, x, y))
    assert pool.rounds == [1, 2, 3]
    resume(12)
    assert pool.rounds[-1] == 2
    assert resampling_hook(pool, 0) [0] is None


class _Pool:
    """A resampling pool: round r holds 32 samples of its own; reading records which thread read it."""

    def __init__(self) -> None:
        self.round, self.readers = 0, set()

    def __len__(self) -> int:
        return 32

    def resample(self, r: int) -> None:
        self.round = r

    def __getitem__(self, i: int):
        import threading

        self.readers.add(threading.current_thread().name)
        g = torch.Generator().manual_seed(1000 * self.round + i)
        x = torch.randn(4, generator=g)
        return x, (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(0, keepdim=True)


def _pool_run(compute, steps: int = 23, every: int = 5):
    from ens.training import batch_indices, stack_batch

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    pool = _Pool()
    hook, resume = resampling_hook(pool, every)
    loop = Loop("fit", Schedule(steps, 0.02), torch.optim.AdamW(net.parameters(), lr=0.02), hooks=[hook],
                on_resume=resume, show_progress=False, compute=compute)
    seen = []

    def step_fn(step, batch):
        x, y = batch
        seen.append(float(x.sum()))
        return ((net(x) - y) ** 2).mean()

    res = loop.run(lambda step: stack_batch(pool, batch_indices(len(pool), 8, 3, step)), step_fn)
    return net, seen, res, pool


def test_prefetched_batches_are_the_batches_across_pool_resamples():
    from ens.compute import Compute

    ref, ref_seen, ref_res, ref_pool = _pool_run(Compute(prefetch=False))
    net, seen, res, pool = _pool_run(Compute(prefetch=True))
    assert seen == ref_seen, "each step trains on the batch it would get without prefetch"
    assert res.last_loss == ref_res.last_loss
    for a, b in zip(ref.parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(r.startswith("ens-prefetch") for r in pool.readers), "batches were built in the worker thread"
    assert all(not r.startswith("ens-prefetch") for r in ref_pool.readers)


def test_prefetch_error_reaches_the_training_thread():
    from ens.compute import Compute

    net, x, y = _problem()

    def batches(step):
        if step == 3:
            raise ValueError("bad image 3")
        return (x[:8], y[:8])

    loop = Loop("fit", Schedule(6, 0.01), torch.optim.SGD(net.parameters(), lr=0.01), show_progress=False,
                compute=Compute(prefetch=True))
    with pytest.raises(ValueError, match="bad image 3"):
        loop.run(batches, lambda step, b: ((net(b[0]) - b[1]) ** 2).mean())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_loop_learns_with_the_scaler_where_fp16(dtype):
    """The mixed-precision path the CUDA runs take (bf16 autocast; fp16 with a gradient scaler), run on the CPU."""
    from ens.compute import Compute

    compute = Compute(amp=dtype)
    assert (compute.grad_scaler() is not None) == (dtype is torch.float16)
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    dtypes = set()

    def step_fn(step, b):
        out = net(b[0])
        dtypes.add(out.dtype)
        return ((out.float() - b[1]) ** 2).mean()

    loop = Loop("fit", Schedule(150, 0.05), torch.optim.AdamW(net.parameters(), lr=0.05), show_progress=False,
                compute=compute)
    res = loop.run(lambda step: (x[(step * 8) % 56:][:8], y[(step * 8) % 56:][:8]), step_fn)
    assert dtypes == {dtype}, "the forward ran under autocast"
    assert res.last_loss < 0.05 * res.first_loss
    assert net.weight.dtype == torch.float32, "master weights stay float32"


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    import os
    import stat

    from ens.training import atomic_save_tensors, atomic_write_text

    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode & 0o044, "readable by others as any file the user writes (umask permitting)"

    def failing(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    from ens.training import _atomic

    with pytest.raises(OSError, match="disk full"):
        _atomic(target, failing)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    atomic_save_tensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_progress_goes_to_plain_lines_when_the_output_is_not_a_terminal(capsys, monkeypatch):
    """A log file (nohup, CI) gets a line now and then with the step, the loss and the time left, instead of a
    live bar that prints nothing until the end."""
    import ens.training as tr

    monkeypatch.setattr(tr, "PLAIN_PROGRESS_EVERY_S", 0.0)
    net = torch.nn.Linear(2, 1)
    x, y = torch.randn(8, 2), torch.randn(8, 1)

    def step_fn(step, b):
        loss = ((net(b[0]) - b[1]) ** 2).mean()
        return loss, {"rec": loss}

    Loop("distil", Schedule(3, 0.01), torch.optim.SGD(net.parameters(), lr=0.01)).run(lambda step: (x, y), step_fn)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("distil ")]
    assert [ln.split()[1] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert "loss" in lines[0] and "elapsed" in lines[0] and "left)" in lines[0] and "left" not in lines[-1]
    monkeypatch.setattr(tr, "PLAIN_PROGRESS_EVERY_S", 3600.0)
    advance = tr.plain_progress("rank", 4)
    for _ in range(4):
        advance()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("rank 4/4 (")  # only the last step within the interval
