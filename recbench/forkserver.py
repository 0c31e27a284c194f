"""Runs forked from a process that has imported the training stack once.

A ``recbench train`` process spends ~5 CPU seconds importing torch, Lightning, Hydra and
torchmetrics before its first step; a 13-model, 3-seed compare paid that 39 times. ``compare``
therefore starts one fork server per job slot: ``python -m recbench.forkserver <compare pid>
<socket fd> <results root>`` imports those modules (never polars, whose thread pool does not
survive a fork, and nothing that starts a thread pool or touches a device), then forks every run
it is asked for. The child is what ``python -m recbench.cli train ...`` would be, minus the
imports: its own session and process group, the run's environment, working directory and
arguments, stdout and stderr into the run's log, its exit status handed back.

The server keeps ``recbench.supervise``'s guarantees for its runs:

- it dies with the compare, even by SIGKILL (``PR_SET_PDEATHSIG`` plus a poll of its parent id),
  and kills the current run's whole process group (its data-loader workers included) first; the
  run also dies by SIGKILL if the server goes;
- a stop request passes SIGTERM on to the run's group and kills the group ``STOP_GRACE_S``
  seconds later if it is still there; whatever of the group is left when the run ends is killed;
- the run's lock (``RunLock``) arrives with the request (``SCM_RIGHTS``) and is held by the run
  alone, so the kernel drops it when the run's processes are gone, however they end.

Messages are JSON over a ``SOCK_SEQPACKET`` socket pair, one request at a time per server:
``{"op": "run", "argv", "env", "cwd", "log"}`` (+ the lock's descriptor) → ``{"started": pid}``
… ``{"status": <wait status>, "cpu_seconds": <the run's user + system CPU>}``;
``{"op": "stop"}`` while a run is live; EOF ends the server.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from recbench.supervise import POLL_S, STOP_GRACE_S, _kill_group, _signal_on_parent_death

# what every run imports before its first step (~5 CPU s); polars is left out on purpose
PRELOAD = (
    "torch",
    "pytorch_lightning",
    "pytorch_lightning.loggers",
    "torchmetrics",
    "hydra",
    "hydra._internal.utils",
    "omegaconf",
    "rich",
    "torch.utils.tensorboard",
    "recbench.cli",
    "recbench.train",
    "recbench.validate",
    "recbench.models",
    "recbench.tasks.ctr",
    "recbench.tasks.rating",
    "recbench.tasks.topk",
    "recbench.tasks.next_item",
)
# modules that must not be imported before a fork: their thread pools would be lost in the child
NOT_BEFORE_FORK = ("polars",)
MAX_MESSAGE = 1 << 20
READY_TIMEOUT_S = 300.0


def preload() -> list[str]:
    """Import ``PRELOAD``; returns the modules of ``NOT_BEFORE_FORK`` that came with them."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    return [m for m in NOT_BEFORE_FORK if m in sys.modules]


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def _receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the descriptors that came with it; (None, []) at EOF."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        return None, []
    return json.loads(data), list(fds)


# ---------------------------------------------------------------------------- the server


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(request: dict[str, Any], server: int) -> None:
    """The forked run: becomes ``recbench <argv>`` and never returns."""
    code = 1
    try:
        os.setsid()
        _signal_on_parent_death(signal.SIGKILL)
        if os.getppid() != server:
            os._exit(137)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            # OpenMP read the server's environment when torch was imported, not the run's
            import torch

            torch.set_num_threads(int(threads))
        from recbench.cli import main

        sys.argv = ["recbench", *request["argv"]]
        try:
            main(list(request["argv"]))
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc.code)
        except BaseException:  # noqa: BLE001 - printed as the interpreter would, then exit 1
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - nothing left to report it to
                pass
        os._exit(code)


def _supervise_run(sock: socket.socket, pid: int, parent: int) -> tuple[int, float] | None:
    """Wait for the forked run ``pid`` while answering stop requests; its wait status and CPU
    seconds, or None when the compare is gone (the run's group is killed then)."""
    deadline: float | None = None
    listening = True
    while True:
        # WNOWAIT: the exited run stays a zombie until its group is killed (no pid reuse)
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid:
            break
        if os.getppid() != parent:
            _kill_group(pid)
            deadline = deadline or time.monotonic()
        elif deadline is not None and time.monotonic() > deadline:
            _kill_group(pid)
        readable, _, _ = select.select([sock] if listening else [], [], [], POLL_S)
        if readable:
            try:
                message, fds = _receive(sock)
            except OSError:
                message, fds = None, []
            for fd in fds:
                os.close(fd)
            if message is None:  # the compare closed its end: it is gone or giving up
                listening = False
                _kill_group(pid)
                deadline = time.monotonic()
            elif message.get("op") == "stop" and deadline is None:
                _kill_group(pid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE_S
    _kill_group(pid)  # what the run left behind
    _, status, usage = os.wait4(pid, 0)
    if os.getppid() != parent:
        return None
    return status, usage.ru_utime + usage.ru_stime


def serve(parent: int, sock: socket.socket) -> None:
    _signal_on_parent_death(signal.SIGTERM)
    if os.getppid() != parent:
        return
    current: list[int] = []

    def on_term(signum, frame) -> None:
        for pid in current:
            _kill_group(pid)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the compare stops runs with "stop"
    late = preload()
    _send(sock, {"ready": os.getpid(), "imported_before_fork": late})
    while os.getppid() == parent:
        readable, _, _ = select.select([sock], [], [], 1.0)
        if not readable:
            continue
        request, fds = _receive(sock)
        if request is None:
            return
        if request.get("op") != "run":
            for fd in fds:
                os.close(fd)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(request, me)
        for fd in fds:  # the run holds the lock now; it is released when the run's group ends
            os.close(fd)
        current.append(pid)
        _send(sock, {"started": pid})
        ended = _supervise_run(sock, pid, parent)
        current.clear()
        if ended is None:
            return
        try:
            _send(sock, {"status": ended[0], "cpu_seconds": ended[1]})
        except OSError:
            return


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m recbench.forkserver <parent pid> <socket fd> [results root]")
    sock = socket.socket(fileno=int(argv[1]))
    serve(int(argv[0]), sock)


# ---------------------------------------------------------------------------- the client


class ForkServerError(RuntimeError):
    """The server could not start or died: the caller trains the run in a fresh interpreter."""


class ForkServer:
    """A fork server started by this process (call from the thread that outlives every run: Linux
    signals the server when that thread ends). ``run`` blocks; one run at a time."""

    def __init__(self, env: dict[str, str], root: str | os.PathLike, log: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "recbench.forkserver",
                    str(os.getpid()),
                    str(theirs.fileno()),
                    str(root),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        theirs.close()
        self.sock = ours
        self.ready = False
        self.dead: str | None = None
        self.finished = threading.Event()
        self.finished.set()
        self.last_cpu_seconds: float | None = None  # the last run's user + system CPU
        self.imported_before_fork: list[str] | None = None  # known once the server is ready

    def _fail(self, why: str) -> ForkServerError:
        self.dead = why
        self.close()
        tail = ""
        try:
            tail = self.log.read_text(errors="replace").strip()[-2000:]
        except OSError:
            pass
        return ForkServerError(f"{why}{': ' + tail if tail else ''}")

    def _next(self, timeout: float | None) -> dict[str, Any]:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            raise self._fail(f"no answer from the fork server within {timeout:.0f} s")
        try:
            message, fds = _receive(self.sock)
        except OSError as exc:
            raise self._fail(f"the fork server's socket failed ({exc})") from exc
        for fd in fds:
            os.close(fd)
        if message is None:
            raise self._fail(f"the fork server exited ({self.proc.poll()})")
        return message

    def wait_ready(self) -> None:
        if self.dead:
            raise ForkServerError(self.dead)
        if not self.ready:
            message = self._next(READY_TIMEOUT_S)
            self.imported_before_fork = list(message.get("imported_before_fork") or [])
            if self.imported_before_fork:
                raise self._fail(
                    f"the fork server imported {message['imported_before_fork']} before forking"
                )
            self.ready = True

    def run(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        log: Path,
        lock_fd: int | None = None,
    ) -> int:
        """Run ``recbench <argv>`` forked from the server; its exit code as ``Popen.returncode``
        gives it (negative: killed by that signal). Raises ``ForkServerError`` when the server
        cannot take it or dies meanwhile (a run it had started dies with it)."""
        self.wait_ready()
        request = {"op": "run", "argv": argv, "env": env, "cwd": cwd, "log": str(log)}
        self.finished.clear()
        try:
            try:
                _send(self.sock, request, [lock_fd] if lock_fd is not None else None)
            except OSError as exc:
                raise self._fail(f"the fork server's socket failed ({exc})") from exc
            self._next(READY_TIMEOUT_S)  # {"started": pid}
            message = self._next(None)
            self.last_cpu_seconds = message.get("cpu_seconds")
            return os.waitstatus_to_exitcode(int(message["status"]))
        finally:
            self.finished.set()

    def stop(self) -> None:
        """Stop the live run (SIGTERM to its group, SIGKILL after the grace) and wait for it; the
        server itself is killed if the run is not reported gone in time."""
        if self.finished.is_set() or self.dead:
            return
        try:
            _send(self.sock, {"op": "stop"})
        except OSError:
            pass
        if not self.finished.wait(STOP_GRACE_S + 5):
            self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()  # its handler kills the live run's group
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
