from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
torch.set_num_threads(1)  # tiny tensors: one thread is faster and never oversubscribes


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("ENS_CACHE_DIR", str(tmp_path_factory.mktemp("ens-cache")))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: with 2 cores shared by other jobs, 2 spinning threads are 10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def micro_cfg():
    """A U-Net small enough for unit tests: width 8, two blocks in some stages."""
    from blocks import UNetConfig

    return UNetConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))


@pytest.fixture
def u8_qdq_export():
    """``(net, path) -> x``: ``net``'s onnx_int8 fake-quant model (ORT placement, seeded weights, calibrated on
    ``x``) exported to ``path`` as a Q/DQ graph with U8 activations, before the pixel-shuffle rewrites."""

    def export(net, path):
        import torch

        from ens.finalize import export as ex
        from ens.finalize.qat import quantize_model
        from ens.finalize.qdq_uint8 import activations_to_uint8
        from profilers.networks import build_network

        torch.manual_seed(0)
        x = torch.rand(*net.shape)
        ex.export_onnx(quantize_model(build_network(net).eval(), [x], placement="ort"), net.shape, path)
        activations_to_uint8(path)
        return x

    return export


@pytest.fixture(scope="session")
def micro_recipe():
    from ens.zoo.build import ZooRecipe
    from ens.zoo.distill import DistillRecipe
    from ens.zoo.teacher import TeacherRecipe

    return ZooRecipe(TeacherRecipe(steps=4, batch_size=2, warmup=1), DistillRecipe(steps=3, batch_size=2,
                     calib_steps=2), patch_size=32, train_patches=16, val_patches=4, quality_mixed=2,
                     quality_images=1, quality_crop=64, rank_archs=3, rank_finetune_steps=1)


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory, micro_recipe):
    """A zoo of the micro U-Net, trained for a handful of steps: for wiring, not quality."""
    from blocks import UNetConfig
    from ens.zoo.build import build_zoo

    cfg = UNetConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))
    root = tmp_path_factory.mktemp("zoo")
    return build_zoo("deblur", "tiny", out_root=root, config=cfg, recipe=micro_recipe, show_progress=False,
                     log=lambda s: None)


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a real PostgreSQL server on 127.0.0.1, started for this test session."""
    from tests.pg import PostgresServer, find_bin

    if not (find_bin("initdb") and find_bin("pg_ctl")):
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs Debian's postgresql)")
    import shutil
    import tempfile
    from pathlib import Path

    # not under pytest's tmp folder: that one is private to root, and the server runs as 'postgres'
    root = Path(tempfile.mkdtemp(prefix="ens-pg-"))
    server = PostgresServer(root / "pg")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
