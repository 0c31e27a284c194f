"""`recbench.launch`: which runs start ranks, and every rank leaving its process group."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from omegaconf import OmegaConf

from recbench.errors import ConfigError
from recbench.launch import local_ranks, needs_launch


def _cfg(**trainer):
    return OmegaConf.create({"trainer": {"strategy": "auto", "devices": 1, **trainer}})


def test_only_a_multi_device_ddp_run_on_one_node_starts_ranks(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert needs_launch(_cfg()) == 0
    assert needs_launch(_cfg(strategy="ddp", devices=1)) == 0
    assert needs_launch(_cfg(strategy="ddp", devices=3)) == 3
    with pytest.raises(ConfigError, match="torchrun or srun"):
        needs_launch(_cfg(strategy="ddp", devices=2, num_nodes=2))
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank torchrun (or recbench) already started
    assert needs_launch(_cfg(strategy="ddp", devices=3)) == 0


@pytest.fixture
def group(monkeypatch):
    """A one-rank Gloo group in this process, as a rank of a DDP run has."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_rank_leaves_its_group_when_the_run_ends(group, tmp_path):
    """A rank that exits with a live Gloo group can abort during interpreter shutdown."""
    cfg = _cfg(strategy="ddp", devices=2)
    with local_ranks(cfg, tmp_path):
        assert dist.is_initialized()
    assert not dist.is_initialized()


def test_after_an_error_the_group_is_left_alone(group, tmp_path):
    """Destroying a group after an error can wait on ranks that never arrive."""
    cfg = _cfg(strategy="ddp", devices=2)
    with pytest.raises(RuntimeError, match="boom"), local_ranks(cfg, tmp_path):
        raise RuntimeError("boom")
    assert dist.is_initialized()


def test_a_started_rank_that_fails_leaves_a_gloo_group_and_exits_2(group, tmp_path, monkeypatch):
    """A rank recbench started reports a recbench error with status 2, not an abort."""
    import recbench.launch as launch
    from recbench.errors import RecbenchError

    def failing_run(cfg):
        raise RecbenchError("bad shard")

    monkeypatch.setattr("recbench.train.run", failing_run)
    path = tmp_path / "ddp_config.yaml"
    path.write_text("seed: 1\n")
    monkeypatch.setattr("sys.argv", ["recbench.launch", str(path)])
    with pytest.raises(SystemExit) as stop:
        launch.main()
    assert stop.value.code == 2
    assert not dist.is_initialized()
