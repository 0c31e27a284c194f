"""Starting DDP ranks on one node without re-executing the command line.

Lightning's own launcher re-runs ``sys.argv`` in each child; under a Hydra ``-m`` sweep every
child would then run the whole sweep. recbench instead writes the job's resolved config to the
run directory and starts ranks 1..n-1 as ``python -m recbench.launch <config>``; the current
process becomes rank 0. Lightning sees ``LOCAL_RANK`` in the environment and does not launch
again. Under torchrun or SLURM (several nodes) the environment already names every rank, so
nothing is started here; the job's size there must be what the config asks for.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recbench.errors import ConfigError, RecbenchError, recbench_cause

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK")
# SLURM job names Lightning takes for an interactive allocation: it then ignores SLURM's task
# variables, so recbench starts the ranks of the node itself
SLURM_INTERACTIVE = ("bash", "interactive")
# after rank 0 fails: how long the other ranks get to end by themselves before they are stopped
STOP_GRACE_S = 3.0
# how a rank that SIGTERM stopped exits (128 + 15, as a shell reports it)
SIGTERM_STATUS = 143


def started_outside() -> tuple[str, int | None] | None:
    """The launcher that started this process as one rank of a job, and the job's number of
    ranks as Lightning will read it: ``("srun", SLURM_NTASKS)`` in a SLURM job step that is not
    interactive, ``("torchrun", WORLD_SIZE)`` where ``LOCAL_RANK`` is set (torchrun, or a rank
    recbench started); None for a process started by hand."""
    env = os.environ

    def count(key: str) -> int | None:
        value = env.get(key, "").strip()
        return int(value) if value.isdigit() else None

    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in SLURM_INTERACTIVE:
        return "srun", count("SLURM_NTASKS")
    if "LOCAL_RANK" in env:
        return "torchrun", count("WORLD_SIZE")
    return None


def world_mismatch(launcher: str, world: int | None, devices: int, nodes: int) -> str | None:
    """Why a job whose launcher started another number of ranks than the config asks for is
    refused (Lightning would stop each rank with a traceback, after the data are prepared);
    None when the numbers agree or the launcher's is unknown."""
    if world is None or devices * nodes == world:
        return None
    n = devices * nodes
    ranks = f"{n} rank{'s' if n != 1 else ''}"
    asked = f"trainer.devices={devices} × trainer.num_nodes={nodes} = {ranks}"
    if launcher == "srun":
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "?")
        return (
            f"SLURM started {world} task{'s' if world != 1 else ''} for this job "
            f"(SLURM_NTASKS={world}, SLURM_NTASKS_PER_NODE={per_node}, "
            f"SLURM_NNODES={os.environ.get('SLURM_NNODES', '?')}) and Lightning takes one rank "
            f"per task, but the config asks for {asked}: start one task per device "
            f"(#SBATCH --nodes={nodes} --ntasks-per-node={devices}, then srun), or set "
            "trainer.devices to the tasks per node and trainer.num_nodes to the nodes. In an "
            "interactive allocation, SLURM_JOB_NAME=interactive lets recbench start the ranks "
            "of one node itself"
        )
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return (
        f"torchrun started {world} processes for this job (WORLD_SIZE={world}: --nnodes × "
        f"--nproc_per_node), but the config asks for {asked}: set trainer.devices to "
        f"--nproc_per_node{f' ({local} here)' if local else ''} and trainer.num_nodes to --nnodes"
    )


def _check_world(launcher: str, world: int | None, devices: int, nodes: int) -> None:
    why = world_mismatch(launcher, world, devices, nodes)
    if why is not None:
        raise ConfigError(why)


def needs_launch(cfg: DictConfig) -> int:
    """Number of local ranks recbench must start (0: none to start)."""
    t = cfg.trainer
    strategy = str(t.get("strategy", "auto"))
    devices = t.get("devices", 1)
    if "ddp" not in strategy or not isinstance(devices, int):
        return 0
    nodes = int(t.get("num_nodes", 1))
    outside = started_outside()
    if outside is not None:  # torchrun / SLURM started the ranks
        _check_world(*outside, devices, nodes)
        return 0
    if devices < 2:
        return 0
    if nodes > 1:
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
    arrive; the process is about to exit with that error anyway. When the body fails in a
    process that started ranks, those that do not end by themselves within ``STOP_GRACE_S``
    are stopped (they would otherwise wait on this rank in a collective until its timeout, 30
    minutes, and this rank on them), and then a Gloo group, whose destruction is local, is
    left.
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
    finished, interrupted = False, False
    try:
        yield
        finished = True
    except BaseException as exc:
        # Ctrl-C or SIGTERM (Lightning ends every rank with SystemExit): not a rank's failure
        interrupted = not isinstance(exc, Exception)
        raise
    finally:
        if finished:
            statuses: list[int | None] = [c.wait() for c in children]
            leave_group()
        else:
            statuses = _stop(children, STOP_GRACE_S)
            leave_group(only_gloo=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        failed = [s for s in statuses if s]
        if SIGTERM_STATUS in failed and not interrupted:
            # a rank was stopped by SIGTERM, and this one failed in a collective it left
            from pytorch_lightning.utilities.exceptions import SIGTERMException

            raise SIGTERMException
        if failed and not interrupted:
            raise RecbenchError(
                f"a DDP rank exited with status {max(failed)}; its own message is above"
            )


def _stop(children: list[subprocess.Popen], grace: float) -> list[int | None]:
    """Give ``children`` ``grace`` seconds to end by themselves (a rank whose failure ended
    this one is exiting), then stop the rest: SIGTERM, SIGKILL ``grace`` seconds later (a rank
    blocked in a collective does not run its signal handlers). Each child's own exit status;
    None for one stopped here."""
    deadline = time.monotonic() + grace
    for c in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.wait(timeout=max(0.0, deadline - time.monotonic()))
    own = [c.returncode for c in children]
    for c in children:
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + grace
    for c in children:
        try:
            c.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    return own


def sigterm_without_collectives(trainer: Any) -> None:
    """Make a SIGTERM to one rank of a multi-process job only mark the trainer as stopping.

    Lightning's SIGTERM handler broadcasts from rank 0 inside the handler. Unless every rank
    received the signal at the same moment, that broadcast meets another collective on the
    other ranks (a gradient all-reduce, the per-step stop broadcast) and the job hangs: a
    ``kill`` of rank 0 alone left every rank waiting until the group's 30-minute timeout.
    With the flag alone, the rank that received the signal ends after its current batch
    (Lightning checks it there), and the ranks left waiting on it are stopped as after any
    failure of rank 0 (``local_ranks``) or fail when its group goes away.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is None or not hasattr(connector, "_sigterm_notifier_fn"):
        return  # another Lightning: its own handler stays

    def mark(signum: int, frame: Any) -> None:
        connector.received_sigterm = True

    connector._sigterm_notifier_fn = mark


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
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from recbench.train import run

    cfg = OmegaConf.load(sys.argv[1])
    try:
        run(cfg)
    except SIGTERMException:  # Lightning's exit of status 0: rank 0 must not read it as done
        print(f"stopped (rank {os.environ.get('RANK', '?')}): SIGTERM arrived", file=sys.stderr)
        leave_group(only_gloo=True)
        sys.exit(SIGTERM_STATUS)
    except Exception as exc:
        cause = recbench_cause(exc)  # a constructor's refusal comes wrapped by instantiate
        if cause is None:
            raise
        print(f"error (rank {os.environ.get('RANK', '?')}): {cause}", file=sys.stderr)
        leave_group(only_gloo=True)  # exit 2, not an abort at shutdown
        sys.exit(2)


if __name__ == "__main__":
    main()
