"""The fork server compare starts its runs from: what a forked run sees and returns, how it is
stopped, and that nothing whose threads a fork would lose is imported before forking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbench.forkserver import NOT_BEFORE_FORK, ForkServer, ForkServerError
from recbench.supervise import RunLock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("forkserver")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECBENCH_OUTPUTS": str(root)}
    # the server imports torch without the runs' thread setting: each run brings its own
    server_env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
    srv = ForkServer(server_env, root, root / "server.log")
    srv.wait_ready()
    yield srv, env, root
    srv.close()


def test_the_preload_leaves_out_what_does_not_survive_a_fork(server) -> None:
    srv, _, _ = server
    assert "polars" in NOT_BEFORE_FORK
    assert srv.imported_before_fork == [], f"imported before forking: {srv.imported_before_fork}"


def test_a_forked_command_writes_its_log_and_returns_its_status(server, tmp_path: Path) -> None:
    srv, env, _ = server
    ok = srv.run(["models"], env, str(tmp_path), tmp_path / "ok.log")
    assert ok == 0
    assert "din" in (tmp_path / "ok.log").read_text()
    bad = srv.run(["no-such-command"], env, str(tmp_path), tmp_path / "bad.log")
    assert bad == 2
    assert "unknown command 'no-such-command'" in (tmp_path / "bad.log").read_text()
    # the server goes on serving after a failed run
    assert srv.run(["--help"], env, str(tmp_path), tmp_path / "help.log") == 0


def test_a_forked_run_trains_as_a_fresh_process_does(server, tmp_path: Path) -> None:
    """Same config, same seed: a forked run and a fresh interpreter score the same with the
    threads the run's environment asks for (OMP_NUM_THREADS=1, torch's default left alone)."""
    srv, env, root = server
    args = [
        "train",
        "++dataset.world.n_users=300",
        "debug=fast",
        "logger=none",
        "threads=null",
        "seed=3",
    ]
    lock = RunLock(root, "forked-run", "test")
    assert lock.acquire()
    forked = tmp_path / "forked"
    rc = srv.run(
        [*args, f"hydra.run.dir={forked}"], env, str(tmp_path), tmp_path / "f.log", lock.fd
    )
    assert rc == 0, (tmp_path / "f.log").read_text()[-3000:]
    fresh = tmp_path / "fresh"
    subprocess.run(
        [sys.executable, "-m", "recbench.cli", *args, f"hydra.run.dir={fresh}"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    import json

    got = json.loads((forked / "metrics.json").read_text())
    want = json.loads((fresh / "metrics.json").read_text())
    assert got["test"] == want["test"] and got["val"] == want["val"]
    assert got["perf"]["threads"] == want["perf"]["threads"] == 1
    lock.release()


def test_stop_ends_a_live_run_that_holds_its_lock_until_it_is_gone(server, tmp_path: Path) -> None:
    srv, env, root = server
    lock = RunLock(root, "long-run", "test")
    assert lock.acquire()
    import threading

    result: list[int] = []
    args = [
        "train",
        "++dataset.world.n_users=300",
        "logger=none",
        "threads=1",
        "trainer.max_epochs=100000",
        "trainer.enable_progress_bar=false",
        "callbacks.early_stopping.patience=100000",
        f"hydra.run.dir={tmp_path / 'long'}",
    ]
    log = tmp_path / "long.log"
    worker = threading.Thread(
        target=lambda: result.append(srv.run(args, env, str(tmp_path), log, lock.fd)),
        daemon=True,
    )
    worker.start()
    deadline = time.monotonic() + 120
    checkpoints = tmp_path / "long" / "checkpoints"  # the first epoch's best: it is training
    while not (checkpoints.exists() and any(checkpoints.iterdir())):
        assert time.monotonic() < deadline, "the run did not start training"
        assert worker.is_alive(), log.read_text()[-2000:]
        time.sleep(0.1)
    # the compare's copy closed as a killed compare's would be: the run's own copy keeps the
    # run key locked
    os.close(lock.fd)
    lock.fd = None
    assert not RunLock(root, "long-run", "another compare").acquire()
    t0 = time.monotonic()
    srv.stop()
    worker.join(timeout=60)
    assert not worker.is_alive() and result, "the stopped run was not reported"
    assert result[0] == 128 + signal.SIGTERM, log.read_text()[-2000:]  # not Lightning's 0
    assert "SIGTERM arrived before the run finished" in log.read_text()
    assert not (tmp_path / "long" / "metrics.json").exists()
    assert time.monotonic() - t0 < 35
    assert RunLock(root, "long-run", "another compare").acquire()  # gone with the run
    # and the server takes the next run
    assert srv.run(["--help"], env, str(tmp_path), tmp_path / "next.log") == 0


def test_a_dead_server_says_so_and_takes_no_run(tmp_path: Path) -> None:
    srv = ForkServer(dict(os.environ), tmp_path, tmp_path / "server.log")
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()
    with pytest.raises(ForkServerError, match="exited"):
        srv.run(["--help"], dict(os.environ), str(tmp_path), tmp_path / "x.log")
    assert srv.dead
