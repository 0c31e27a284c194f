"""Multi-node DDP as torchrun starts it: two "nodes" of one process each on localhost (gloo),
evaluating the same seeded weights, match one process exactly. The data are served from shards,
so this also checks that shard-fed evaluation counts every row once across nodes."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recbench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "recbench.cli", *args]


def torchrun_cmd(node: int, nodes: int, port: int, *args: str) -> list[str]:
    """The command each node runs (docs/scale.md gives it for real machines)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        "--nproc_per_node=1",
        f"--node_rank={node}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "recbench.cli",
        *args,
    ]


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_two_torchrun_nodes_evaluate_like_one_process(tmp_path):
    spec = importlib.util.spec_from_file_location("make_criteo", ROOT / "scripts/make_criteo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path / "data"
    module.write(data / "train.txt", 1301, 5, 0.25, 1301, 0.05)  # odd split sizes
    base = [
        "train",
        "model=deepfm",
        "dataset=criteo",
        f"dataset.root={data}",
        "dataset.shards.block_rows=16",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "threads=1",
        "logger=none",
        "record=false",
    ]
    # the seeded initial weights, evaluated: one process against two torchrun nodes
    evaluate = [*base, "fit=false"]
    run(recbench_cmd(*evaluate, f"hydra.run.dir={tmp_path / 'one'}"), tmp_path)

    port = free_port()
    multi = [*evaluate, "trainer=ddp", "trainer.accelerator=cpu", "trainer.num_nodes=2"]
    multi.append("trainer.devices=1")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            torchrun_cmd(node, 2, port, *multi, f"hydra.run.dir={tmp_path / f'node{node}'}"),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "node0" / "metrics.json").read_text())
    assert not (tmp_path / "node1" / "metrics.json").exists()  # only global rank 0 records
    assert two["perf"]["devices"] == 2 and two["perf"]["nodes"] == 2
    for split in ("val", "test"):
        assert two[split]["rows"] == one[split]["rows"] == one["data"]["rows"][split]
        for k in ("auc", "logloss"):
            assert two[split][k] == pytest.approx(one[split][k], abs=1e-6), (split, k)
    assert any(one[s]["rows"] % 2 == 1 for s in ("val", "test"))


def slurm_env(task: int, tasks: int, job_name: str, port: int) -> dict[str, str]:
    """The variables srun gives task ``task`` of ``tasks`` on one node (job 4242)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    return {
        **env,
        "PYTHONWARNINGS": "ignore",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": job_name,
        "SLURM_NTASKS": str(tasks),
        "SLURM_NTASKS_PER_NODE": str(tasks),
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(task),
        "SLURM_LOCALID": str(task),
        "MASTER_PORT": str(port),
    }


@pytest.mark.slow  # two DDP runs (about 45 s); tests/unit/test_launch.py checks the logic
@pytest.mark.parametrize("job_name", ["train.sbatch", "interactive"])
def test_a_slurm_job_of_two_tasks_records_the_run_once(tmp_path, job_name):
    """srun's two tasks are the two ranks; in an interactive allocation (which Lightning does
    not take for a SLURM job) the one command starts its second rank itself. Either way one
    record, one metrics.json and one TensorBoard writer, saying 2 devices on 1 node."""
    run_dir = tmp_path / "run"
    args = ["train", "model=mlp", "++dataset.world.n_users=300", "debug=fast", "threads=1"]
    args += [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={run_dir}",
    ]
    outputs = tmp_path / "outputs"
    port = free_port()
    tasks = 2 if job_name != "interactive" else 1  # srun starts both, or the command its ranks
    procs = [
        subprocess.Popen(
            recbench_cmd(*args),
            cwd=tmp_path,
            env={**slurm_env(task, 2, job_name, port), "RECBENCH_OUTPUTS": str(outputs)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for task in range(tasks)
    ]
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    lines = (outputs / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["perf"]["devices"] == 2 and record["perf"]["nodes"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["run_key"] == record["run_key"]
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # one writing process


def test_num_nodes_without_torchrun_names_the_launcher(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "SLURM_NTASKS")}
    proc = subprocess.run(
        recbench_cmd("train", "trainer=ddp", "trainer.num_nodes=2", "trainer.accelerator=cpu"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "torchrun" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def _pids_running(config: str) -> list[int]:
    """Processes whose command line ends with ``config`` (the ranks recbench started)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if cmd.endswith(config):
            found.append(int(proc.name))
    return found


@pytest.mark.slow  # a DDP job stopped mid-fit (about 25 s)
@pytest.mark.parametrize("target", ["rank 0", "rank 1"])
def test_sigterm_to_one_rank_stops_the_whole_ddp_job(tmp_path, target):
    """``kill`` of one rank of a DDP job (rank 0: the process the user started) ends every
    rank within seconds with exit 143, as a SIGTERM to the whole group does. Lightning's own
    handler broadcast from inside the signal handler on rank 0 and the job hung until the
    group's 30-minute timeout; a stopped rank 1 left rank 0 with a collective's traceback."""
    import signal
    import time

    run_dir = tmp_path / "run"
    args = ["train", "model=mlp", "++dataset.world.n_users=3000", "logger=none", "record=false"]
    args += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "threads=1"]
    args += ["trainer.max_epochs=200", "callbacks.early_stopping.patience=200"]
    args += ["trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RECBENCH_OUTPUTS": str(tmp_path / "out")}
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(recbench_cmd(*args), cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        config = str(run_dir / "ddp_config.yaml")
        deadline = time.monotonic() + 240
        while "epoch 1:" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        ranks = _pids_running(config)
        assert len(ranks) == 1, log.read_text()
        os.kill(proc.pid if target == "rank 0" else ranks[0], signal.SIGTERM)
        t0 = time.monotonic()
        status = proc.wait(timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert status == 143, text
    assert "stopped: SIGTERM arrived before the run finished; nothing recorded" in text
    assert "Traceback" not in text
    assert not _pids_running(config), "a rank was left running"
    assert not (run_dir / "metrics.json").exists()
