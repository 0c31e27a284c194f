"""Starting DDP ranks on one node without re-executing the command line.

Lightning's own launcher re-runs ``sys.argv`` in each child; under a Hydra ``-m`` sweep every
child would then run the whole sweep. recbench instead writes the job's resolved config to the
run directory and starts ranks 1..n-1 as ``python -m recbench.launch <config>``; the current
process becomes rank 0. Lightning sees ``LOCAL_RANK`` in the environment and does not launch
again. Under torchrun or SLURM (several nodes) the environment already names every rank, so
nothing is started here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recbench.errors import ConfigError, RecbenchError, recbench_cause

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK")


def needs_launch(cfg: DictConfig) -> int:
    """Number of local ranks recbench must start (0: none to start)."""
    t = cfg.trainer
    strategy = str(t.get("strategy", "auto"))
    devices = t.get("devices", 1)
    if "ddp" not in strategy or not isinstance(devices, int) or devices < 2:
        return 0
    if "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return 0  # torchrun / SLURM started the ranks
    if int(t.get("num_nodes", 1)) > 1:
        raise ConfigError(
            f"trainer.num_nodes={t.num_nodes}: recbench starts the ranks of one node only; start "
            "recbench with torchrun or srun on every node instead"
        )
    return devices


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_ranks(cfg: DictConfig, run_dir: Path) -> Iterator[None]:
    """Start ranks 1..n-1 for this job and make this process rank 0, for the ``with`` body.

    Every rank leaves its process group when the body ends normally: a process that exits
    with a Gloo group still alive can abort (SIGABRT) while the interpreter shuts down. After
    an error the group is left alone, as destroying it then can wait on ranks that never
    arrive; the process is about to exit with that error anyway.
    """
    n = needs_launch(cfg)
    if not n:  # one process, a rank recbench started, or a rank of torchrun / SLURM
        yield
        leave_group()
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "ddp_config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(n),
        "NODE_RANK": "0",
    }
    children = []
    for rank in range(1, n):
        child_env = {**os.environ, **env, "LOCAL_RANK": str(rank), "RANK": str(rank)}
        children.append(
            subprocess.Popen([sys.executable, "-m", "recbench.launch", str(path)], env=child_env)
        )
    os.environ.update({**env, "LOCAL_RANK": "0", "RANK": "0"})
    try:
        yield
    finally:
        failed = [c.wait() for c in children]
        leave_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if any(failed):
            raise RecbenchError(
                f"a DDP rank exited with status {max(failed)}; its own message is above"
            )


def leave_group(only_gloo: bool = False) -> None:
    """Destroy this process's default process group, if it has one. ``only_gloo``: only a
    Gloo group, whose destruction is local to the process (after an error, NCCL's can wait on
    the other ranks)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if not only_gloo or dist.get_backend() == "gloo":
        dist.destroy_process_group()


def main() -> None:
    from recbench.train import run

    cfg = OmegaConf.load(sys.argv[1])
    try:
        run(cfg)
    except Exception as exc:
        cause = recbench_cause(exc)  # a constructor's refusal comes wrapped by instantiate
        if cause is None:
            raise
        print(f"error (rank {os.environ.get('RANK', '?')}): {cause}", file=sys.stderr)
        leave_group(only_gloo=True)  # exit 2, not an abort at shutdown
        sys.exit(2)


if __name__ == "__main__":
    main()
