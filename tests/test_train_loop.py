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
    res = loop.run(lambda s: (step(s), {"half": step(s) / 2}))
    assert res.last_loss < 0.01 * res.first_loss
    assert res.terms["half"] == pytest.approx(res.terms["loss"] / 2, rel=1e-5)


def test_interrupted_loop_resumes_to_the_same_weights_and_state(tmp_path):
    ref, x, y = _problem()
    Loop("fit", Schedule(30, 0.01), torch.optim.AdamW(ref.parameters(), lr=0.01), show_progress=False).run(
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
        lp.run(stop_at_17)
    assert ck.is_file()
    net2 = net
    with torch.no_grad():  # scramble: the resume must restore from the checkpoint, not keep memory
        for p in net2.parameters():
            p.add_(1.0)
    lp2 = loop_for(30)
    lp2.run(base)
    assert seen == [17]
    assert lp2.state["marks"] == [10, 20, 30], "hook records survive the resume"
    for a, b in zip(ref.parameters(), net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_non_finite_loss_is_a_clear_error():
    net, x, y = _problem()
    loop = Loop("teacher", Schedule(5, 0.1), torch.optim.SGD(net.parameters(), lr=0.1), show_progress=False)
    with pytest.raises(EnsError, match="teacher: the loss became nan"):
        loop.run(lambda s: net(x).sum() * float("nan"))


def test_resampling_hook_draws_the_round_of_the_step():
    class Pool:
        rounds: list[int] = []

        def resample(self, r: int) -> None:
            self.rounds.append(r)

    pool = Pool()
    hook, resume = resampling_hook(pool, 5)
    net, x, y = _problem()
    Loop("fit", Schedule(17, 0.01), torch.optim.SGD(net.parameters(), lr=0.01), hooks=[hook],
         show_progress=False).run(_step(net, x, y))
    assert pool.rounds == [1, 2, 3]
    resume(12)
    assert pool.rounds[-1] == 2
    assert resampling_hook(pool, 0) [0] is None


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
