"""The teacher trained data-parallel: ``ens zoo build --gpus N``.

N processes (``torch.multiprocessing``, spawn), one per GPU of this machine, join a ``torch.distributed``
group on loopback (NCCL on CUDA, Gloo on the CPU) and run :func:`ens.zoo.teacher.train_teacher` as ranks
0..N-1 of :class:`~torch.nn.parallel.DistributedDataParallel`. Each takes its shard of the same global batch,
so the result is the single-process teacher's up to float summation order (``tests/test_parallel.py`` checks
this with two Gloo processes on the CPU). Rank 0 writes the resumable checkpoint and the held-out curve; the
parent reads the trained teacher back from that checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from blocks.unet import HybridUNet, UNetConfig
from ens.compute import Compute
from ens.errors import EnsError
from ens.training import atomic_write_text


@dataclass
class TeacherJob:
    """Everything a rank needs, sent to each spawned process."""

    config: UNetConfig
    train_set: Any
    recipe: Any  # TeacherRecipe
    seed: int
    ckpt_path: Path
    stats_path: Path
    compute: Compute
    port: int
    show_progress: bool = True
    curve_val: Any = None
    task: str | None = None
    threads: int = 1
    init_state: dict[str, torch.Tensor] | None = None  # the parent's initial weights (set by the launcher)
    fresh: bool = True  # False: continue a trained teacher (train_teacher's ``fresh`` and ``step_offset``)
    step_offset: int = 0
    # Data pools that cannot be pickled (their builders are closures) are re-made in each rank instead, by this
    # picklable function -> (train_set, curve_val); the pools are seeded, so every rank gets the same ones.
    load: Callable[[], tuple[Any, Any]] | None = None


def check_world(world: int, compute: Compute) -> None:
    """``--gpus N``: N CUDA devices must be there (on the CPU, N Gloo processes, for tests and debugging)."""
    if world < 1:
        raise EnsError(f"--gpus {world}: expected 1 or more")
    if compute.cuda and world > torch.cuda.device_count():
        raise EnsError(f"--gpus {world}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, job: TeacherJob) -> None:
    import warnings

    import torch.distributed as dist

    from ens.tasks import get_task
    from ens.zoo.teacher import train_teacher

    # A rank's SIGINT comes from its parent only (the forward in stop_ranks, or torch's parent-death signal): it
    # must stop the rank even when the parent was started in the background, which makes children ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(max(1, job.threads))
    compute = job.compute
    if compute.cuda:
        torch.cuda.set_device(rank)
        compute = replace(compute, device=torch.device("cuda", rank))
    dist.init_process_group("nccl" if compute.cuda else "gloo", init_method=f"tcp://127.0.0.1:{job.port}",
                            rank=rank, world_size=world)
    # channels-last 1x1 convolutions' gradients have another stride than DDP's buckets: harmless, said once per rank
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    try:
        torch.manual_seed(job.seed)
        net = HybridUNet(job.config)
        if job.init_state is not None:
            net.load_state_dict(job.init_state)
        train_set, curve_val = job.load() if job.load is not None else (job.train_set, job.curve_val)
        stats = train_teacher(net, train_set, job.recipe, job.seed, job.ckpt_path,
                              job.show_progress and rank == 0, curve_val=curve_val if rank == 0 else None,
                              task=get_task(job.task) if job.task else None, compute=compute, rank=rank, world=world,
                              fresh=job.fresh, step_offset=job.step_offset)
        if rank == 0:
            atomic_write_text(job.stats_path, json.dumps(stats))
    finally:
        dist.destroy_process_group()


STOP_GRACE_S = 60.0  # how long the ranks get to save and leave after Ctrl-C before they are terminated


def stop_ranks(processes: list, grace_s: float | None = None, forward_after_s: float = 2.0) -> None:
    """After Ctrl-C in the parent: let every rank stop as after its own Ctrl-C (rank 0 saves its checkpoint),
    then terminate what is left, so that no rank stays blocked in a collective holding a GPU.

    A terminal sends SIGINT to the whole process group; when only the parent got it (``kill -INT``), it is
    forwarded to the ranks still alive after ``forward_after_s`` (not at once: a second SIGINT would cut
    rank 0's save short)."""
    grace = STOP_GRACE_S if grace_s is None else grace_s
    t0 = time.monotonic()
    forwarded = False
    while time.monotonic() - t0 < grace and any(p.is_alive() for p in processes):
        if not forwarded and time.monotonic() - t0 >= forward_after_s:
            for p in processes:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGINT)
            forwarded = True
        time.sleep(0.1)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def train_teacher_parallel(net: HybridUNet, world: int, job: TeacherJob) -> dict:
    """Train ``net`` (from its current weights) with ``world`` data-parallel processes; loads the result into
    ``net`` (on the CPU) and returns rank 0's statistics."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    check_world(world, job.compute)
    job = replace(job, init_state={k: v.detach().cpu() for k, v in net.state_dict().items()})
    job.stats_path.unlink(missing_ok=True)
    ctx = mp.start_processes(_rank_main, args=(world, job), nprocs=world, start_method="spawn", join=False)
    try:
        while not ctx.join():  # the first rank to fail stops the others and raises here
            pass
    except KeyboardInterrupt:
        stop_ranks(ctx.processes)
        raise
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise EnsError(f"data-parallel teacher training failed: {last}") from None
    except mp.ProcessExitedException as exc:
        raise EnsError(f"data-parallel teacher training failed: a process exited ({exc})") from None
    prefix = "model.teacher."
    tensors = load_file(str(job.ckpt_path))
    net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return json.loads(job.stats_path.read_text())
