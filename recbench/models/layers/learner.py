"""Where DRN's gradient steps run (``model.learner``).

- ``sync``: each update's steps run at once; the next request is served by the new weights.
- ``lagged``: an update's steps land at the next update, so the requests in between are served
  by the weights as they were when the update began, as a live system keeps serving while its
  model trains. The schedule counts requests and simulated time, never wall time, so a seed
  gives one trajectory.
- ``process``: the ``lagged`` schedule with the steps in a second process, forked at the first
  update, while this one serves requests and runs the environment. The networks' weights are
  shared memory; each update's minibatches are built here when it is submitted and written to
  a shared buffer, and the pipe carries their layout (an array too large for the buffer travels
  through the pipe itself). One torch thread in the second process; with one here too, the
  trajectory equals ``lagged``'s bit for bit.

Every other change of the weights (the DBGD move, the target swap, the explore network) is
made here, between ``join`` and ``submit``, while no step runs.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import signal
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("recbench")

LEARNERS = ("sync", "lagged", "process")
Batch = dict[str, Tensor]
# the batches of one update in shared memory: a default DRN's major update needs about 1 MB
BUFFER_BYTES = 16 << 20


def train_steps(agent: Any, batches: Sequence[Batch]) -> float | None:
    """One optimiser step of ``agent.loss`` per batch, in order; the last loss (None: none)."""
    last = None
    for batch in batches:
        loss = agent.loss(batch)
        agent.opt.zero_grad()
        loss.backward()
        agent.opt.step()
        last = float(loss.detach())
    return last


class InlineSteps:
    """``lagged`` in this process: the submitted steps run at ``join``."""

    def __init__(self, agent: Any) -> None:
        self.agent, self.pending = agent, None

    def submit(self, batches: Sequence[Batch]) -> None:
        self.pending = list(batches)

    def join(self) -> float | None:
        batches, self.pending = self.pending, None
        return None if batches is None else train_steps(self.agent, batches)

    def close(self) -> None:
        self.pending = None


class ProcessSteps:
    """``process``: the submitted steps run in a forked process while this one acts."""

    def __init__(self, agent: Any) -> None:
        # the weights the steps change and the targets they read, seen by both processes
        agent.q.share_memory()
        agent.q_target.share_memory()
        self.buf = mmap.mmap(-1, BUFFER_BYTES)  # anonymous and shared: the child maps it too
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve, args=(agent, child, self.conn, self.buf), name="drn-learner", daemon=True
        )
        self.proc.start()
        child.close()
        self.waiting = False

    def submit(self, batches: Sequence[Batch]) -> None:
        layout: list[dict[str, Any]] = []
        off = 0
        for b in batches:
            entry: dict[str, Any] = {}
            for k, v in b.items():
                a = np.ascontiguousarray(v.numpy())
                off = -(-off // 64) * 64
                if off + a.nbytes <= len(self.buf):
                    np.frombuffer(self.buf, a.dtype, a.size, off)[:] = a.reshape(-1)
                    entry[k] = (a.dtype.str, a.shape, off)
                    off += a.nbytes
                else:  # past the shared buffer: the array itself goes through the pipe
                    entry[k] = a
            layout.append(entry)
        self.conn.send(layout)
        self.waiting = True

    def join(self) -> float | None:
        if not self.waiting:
            return None
        self.waiting = False
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.proc.join(1.0)
            raise RuntimeError(
                f"DRN's learner process ended unexpectedly (exit code {self.proc.exitcode}); "
                "run with model.learner=lagged to see the error in this process"
            ) from None
        if status == "error":
            raise RuntimeError(f"DRN's learner process failed:\n{value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.close()  # the server's recv sees EOF and returns
            self.proc.join(5.0)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.conn.close()
        self.buf.close()


def _read(entry: dict[str, Any], buf: mmap.mmap) -> Batch:
    """A batch from ``submit``'s layout, each array copied out of the shared buffer."""
    out = {}
    for k, x in entry.items():
        if isinstance(x, np.ndarray):
            out[k] = torch.from_numpy(x.copy())
        else:
            dtype, shape, off = x
            n = int(np.prod(shape))
            a = np.frombuffer(buf, np.dtype(dtype), n, off).reshape(shape)
            # copied: the batch's memory laid out as the parent's, for identical kernels
            out[k] = torch.from_numpy(a.copy())
    return out


def _serve(agent: Any, conn: Connection, parent_end: Connection, buf: mmap.mmap) -> None:
    """The learner process: steps on each submitted list of batches, answers its last loss."""
    parent_end.close()  # EOF on conn once the parent's end is gone, whatever became of it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the parent; EOF stops this
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: just end
    torch.set_num_threads(1)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, ConnectionError):
            return
        try:
            batches = [_read(entry, buf) for entry in msg]
            reply: tuple[str, Any] = ("ok", train_steps(agent, batches))
        except Exception:  # the parent raises it at its next update
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except ConnectionError:  # the parent is gone
            return


def make_runner(kind: str, agent: Any) -> InlineSteps | ProcessSteps | None:
    """The runner of a non-``sync`` learner (``sync`` runs its steps itself: None). Where the
    platform cannot fork, ``process`` runs its steps here: the same schedule, no second core."""
    if kind == "process" and "fork" in mp.get_all_start_methods():
        return ProcessSteps(agent)
    if kind == "process":
        log.warning("model.learner=process: this platform cannot fork; the steps run here")
    return None if kind == "sync" else InlineSteps(agent)


__all__ = ["LEARNERS", "InlineSteps", "ProcessSteps", "make_runner", "train_steps"]
