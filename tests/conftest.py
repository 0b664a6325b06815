from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("ENS_CACHE_DIR", str(tmp_path_factory.mktemp("ens-cache")))


@pytest.fixture
def micro_cfg():
    """A U-Net small enough for unit tests: width 8, two blocks in some stages."""
    from blocks import UNetConfig

    return UNetConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))
