"""The fine-tuning that ranks networks: search trials' ``--finetune-steps`` and the zoo's rank check."""

from __future__ import annotations

import json

import pytest
import torch

from blocks import HybridUNet, UNetConfig
from ens.data import load_pairs
from ens.finetune import finetune

CFG = UNetConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2))


@pytest.fixture(scope="module")
def pool():
    return load_pairs("denoise", None, "train", 16, 0, 8)


def _net(seed: int = 0) -> HybridUNet:
    torch.manual_seed(seed)
    return HybridUNet(CFG, {"enc1": ["E"], "enc2": ["T"], "enc3": ["E"], "lat": ["T"], "dec3": ["T"],
                            "dec2": ["E"], "dec1": ["T"], "ref": ["E"]})


def _params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_every_network_sees_the_same_batches(pool):
    """Common random numbers: two copies fine-tuned with one seed end identical, whatever ran in between;
    another seed draws other batches."""
    a, b, c = _net(), _net(), _net()
    finetune(a, pool, 3, seed=5, batch_size=2)
    torch.manual_seed(123)  # the global generator's state must not matter
    torch.rand(10)
    finetune(b, pool, 3, seed=5, batch_size=2)
    finetune(c, pool, 3, seed=6, batch_size=2)
    assert torch.equal(_params(a), _params(b))
    assert not torch.equal(_params(a), _params(c))
    assert not a.training and not b.training


def test_it_trains_and_zero_steps_leave_the_network(pool):
    net, ref = _net(), _net()
    assert finetune(net, pool, 0, seed=0) is None
    assert torch.equal(_params(net), _params(ref))
    loss = finetune(net, pool, 2, seed=0, batch_size=2)
    assert loss is not None and loss > 0
    assert not torch.equal(_params(net), _params(ref))


def test_the_pool_is_put_back(pool):
    """Fine-tuning draws fresh pools as it goes (finalize's recipe); the next network starts on the same one."""
    first = pool.clean.clone()
    finetune(_net(), pool, 70, seed=0, batch_size=1)  # past finalize's resample interval (64 steps)
    assert torch.equal(pool.clean, first)


def test_rank_check_resumes_and_fine_tunes_on_common_batches(micro_zoo, tmp_path, monkeypatch):
    from ens.data import load_pairs as lp
    from ens.tasks import get_task
    from ens.zoo import rank
    from ens.zoo.store import Zoo

    zoo = Zoo.load(micro_zoo)
    sup, task = zoo.supernet(), get_task("deblur")
    kinds = [k for k in zoo.manifest.kinds if k != "T"]
    train = lp("deblur", None, "train", 32, 0, 4)
    val = [lp("deblur", None, "val", 32, 0, 2)[0]]
    seeds: list[int] = []
    real = rank.finetune

    def spy(net, data, steps, seed, **kw):
        seeds.append(seed)
        return real(net, data, steps, seed, **kw)

    monkeypatch.setattr(rank, "finetune", spy)
    work = tmp_path / "rank.json"
    res = rank.rank_fidelity(sup, kinds, train, val, task, n=3, steps=1, seed=4, work_file=work, show_progress=False)
    assert res["n"] == 3 and len(json.loads(work.read_text())) == 3
    assert seeds == [4, 4, 4]
    assert all(r["zero_shot_psnr"] > 0 and r["finetuned_psnr"] > 0 for r in res["archs"])

    def boom(*a, **k):
        raise AssertionError("a finished architecture was fine-tuned again")

    monkeypatch.setattr(rank, "finetune", boom)
    again = rank.rank_fidelity(sup, kinds, train, val, task, n=3, steps=1, seed=4, work_file=work,
                               show_progress=False)
    assert again["archs"] == res["archs"] and again["tau"] == res["tau"]


def test_a_search_trial_fine_tunes_on_the_studys_batches(micro_zoo):
    """``ens search --finetune-steps``: the trial's PSNR is the fine-tuned network's, and the same architecture
    scores the same in any trial (the study's seed fixes the batches)."""
    from ens.data import load_pairs as lp
    from ens.search.trial import TrialContext, TrialEvaluator
    from ens.zoo.store import Zoo

    zoo = Zoo.load(micro_zoo)
    val = [lp("deblur", None, "val", 32, 0, 2)[0]]

    def psnr(steps: int, arch: str) -> float:
        ctx = TrialContext(manifest=zoo.manifest.__dict__.copy(), zoo_state=zoo.state, task="deblur", val=val,
                           profiler="proxy", shape=(1, 3, 32, 32), objectives=["psnr"], finetune_steps=steps,
                           train=lp("deblur", None, "train", 32, 0, 4), seed=3, sample_crop=32)
        return TrialEvaluator(ctx)(arch).metrics["psnr"]

    from search_spaces.arch import Arch

    arch = str(Arch.from_block_kinds({s: ["E", "T"][: len(seq)] + ["E"] * (len(seq) - 2)
                                      for s, seq in zoo.supernet().stages.items()}))
    zero, tuned = psnr(0, arch), psnr(3, arch)
    assert tuned != zero
    assert psnr(3, arch) == tuned
