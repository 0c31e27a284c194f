"""`recbench.launch`: which runs start ranks, and every rank leaving its process group."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch.distributed as dist
from omegaconf import OmegaConf

from recbench.errors import ConfigError, RecbenchError
from recbench.launch import local_ranks, needs_launch, sigterm_without_collectives

LAUNCH_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS")
SLURM_ENV = ("SLURM_JOB_NAME", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES")


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


def test_a_torchrun_or_slurm_job_of_another_size_than_the_config_is_refused(monkeypatch):
    """Lightning would stop every rank with a traceback once the data are prepared."""
    for k in LAUNCH_ENV + SLURM_ENV:
        monkeypatch.delenv(k, raising=False)
    ddp = {"strategy": "ddp"}
    for k, v in {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)  # torchrun --nnodes=1 --nproc_per_node=2
    assert needs_launch(_cfg(**ddp, devices=2)) == 0
    assert needs_launch(_cfg(**ddp, devices=1, num_nodes=2)) == 0
    with pytest.raises(ConfigError, match=r"torchrun started 2 processes.*--nproc_per_node \(2"):
        needs_launch(_cfg(**ddp, devices=1))
    for k in ("LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k)
    # a batch job of one task: Lightning takes the one task for the whole job
    monkeypatch.setenv("SLURM_JOB_NAME", "train.sbatch")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    with pytest.raises(ConfigError, match=r"SLURM started 1 task .*--ntasks-per-node=2"):
        needs_launch(_cfg(**ddp, devices=2))
    monkeypatch.setenv("SLURM_NTASKS", "4")  # srun, 2 nodes × 2 tasks
    assert needs_launch(_cfg(**ddp, devices=2, num_nodes=2)) == 0
    with pytest.raises(ConfigError, match="SLURM started 4 tasks"):
        needs_launch(_cfg(**ddp, devices=2))


def test_an_interactive_slurm_allocation_is_one_node_whose_ranks_recbench_starts(monkeypatch):
    """Lightning ignores SLURM's tasks in an interactive allocation (job name bash or
    interactive) and would re-run the command line in a rank of its own."""
    for k in LAUNCH_ENV + SLURM_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    for name in ("bash", "interactive"):
        monkeypatch.setenv("SLURM_JOB_NAME", name)
        assert needs_launch(_cfg(strategy="ddp", devices=2)) == 2
        with pytest.raises(ConfigError, match="torchrun or srun"):
            needs_launch(_cfg(strategy="ddp", devices=2, num_nodes=2))


def _fake_ranks(monkeypatch, programs: dict[str, str]) -> list[subprocess.Popen]:
    """Make ``local_ranks`` start ``programs[LOCAL_RANK]`` (Python source) as its ranks."""
    started, start = [], subprocess.Popen

    def popen(cmd, env):
        proc = start([sys.executable, "-c", programs[env["LOCAL_RANK"]]], env=env)
        started.append(proc)
        return proc

    for k in LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr("recbench.launch.subprocess.Popen", popen)
    monkeypatch.setattr("recbench.launch.STOP_GRACE_S", 1.0, raising=False)
    return started


def test_a_failure_of_rank_0_stops_the_ranks_waiting_on_it(monkeypatch, tmp_path):
    """Ranks blocked in a collective with rank 0 would wait for its timeout (30 minutes), and
    rank 0 for them; one that does not run its SIGTERM handler there is killed."""
    ready = tmp_path / "deaf"
    blocked = "import time; time.sleep(60)"
    deaf = (
        "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    ranks = _fake_ranks(monkeypatch, {"1": blocked, "2": deaf})
    t0 = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="boom"),
        local_ranks(_cfg(strategy="ddp", devices=3), tmp_path / "run"),
    ):
        while not ready.exists() and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        raise RuntimeError("boom")
    assert time.monotonic() - t0 < 30
    assert [r.poll() for r in ranks] == [-15, -9]  # rank 0's own error is the job's


def test_a_rank_whose_failure_ended_rank_0_is_named(monkeypatch, tmp_path):
    ranks = _fake_ranks(monkeypatch, {"1": "raise SystemExit(3)"})
    with pytest.raises(RecbenchError, match="exited with status 3"):
        with local_ranks(_cfg(strategy="ddp", devices=2), tmp_path):
            ranks[0].wait(timeout=60)
            raise RuntimeError("connection closed by peer")  # what rank 0 then sees


def test_ctrl_c_ends_a_ddp_run_as_it_ends_one_process(monkeypatch, tmp_path):
    """Ctrl-C reaches every rank; Lightning ends each with exit(1) after its graceful shutdown.
    That is the run's end, as in one process, not a failure of one rank."""
    ranks = _fake_ranks(monkeypatch, {"1": "raise SystemExit(1)"})
    with pytest.raises(SystemExit) as stop:
        with local_ranks(_cfg(strategy="ddp", devices=2), tmp_path):
            ranks[0].wait(timeout=60)
            raise SystemExit(1)
    assert type(stop.value) is SystemExit and stop.value.code == 1


def test_a_rank_stopped_by_sigterm_ends_the_job_as_stopped_not_failed(monkeypatch, tmp_path):
    """A SIGTERM to rank 1 alone: it exits 143 and rank 0 then fails in a collective it left.
    The job ends as a stopped run (exit 143 at the CLI), not with the collective's traceback."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    ranks = _fake_ranks(monkeypatch, {"1": "raise SystemExit(143)"})
    with pytest.raises(SIGTERMException):
        with local_ranks(_cfg(strategy="ddp", devices=2), tmp_path):
            ranks[0].wait(timeout=60)
            raise RuntimeError("Connection closed by peer")  # what rank 0 then sees


def test_sigterm_to_one_rank_only_marks_its_trainer_as_stopping(monkeypatch):
    """Lightning's handler broadcasts from rank 0 inside the handler, which meets another
    collective on the other ranks unless they got the signal too: a kill of rank 0 alone hung
    the job. recbench's handler only sets the flag Lightning checks after each batch."""
    import signal

    import pytorch_lightning as pl

    calls = []
    monkeypatch.setattr(dist, "broadcast", lambda *a, **k: calls.append(a))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    sigterm_without_collectives(trainer)
    before = signal.getsignal(signal.SIGTERM)
    trainer._signal_connector.register_signal_handlers()  # as a fit does
    try:
        handler = signal.getsignal(signal.SIGTERM)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(pl.Trainer, "world_size", property(lambda self: 2))
        handler(signal.SIGTERM, None)
        assert trainer.received_sigterm
        assert calls == []  # no collective from inside the handler
    finally:
        trainer._signal_connector.teardown()
        signal.signal(signal.SIGTERM, before)


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
