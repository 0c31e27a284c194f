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
    assert two["perf"]["devices"] == 2
    for split in ("val", "test"):
        assert two[split]["rows"] == one[split]["rows"] == one["data"]["rows"][split]
        for k in ("auc", "logloss"):
            assert two[split][k] == pytest.approx(one[split][k], abs=1e-6), (split, k)
    assert any(one[s]["rows"] % 2 == 1 for s in ("val", "test"))


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
