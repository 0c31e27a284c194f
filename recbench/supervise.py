"""Training children that die with their parent, and per-run locks that die with their holder.

``compare`` starts each run as ``python -m recbench.supervise <compare pid> -- <train command>``.
The supervisor runs the train command in a process group of its own and

- kills that whole group (the run, its DDP ranks, its data-loader workers) when the compare
  dies, even by SIGKILL: Linux signals the supervisor on its parent's death
  (``PR_SET_PDEATHSIG``), and the supervisor also polls its parent id, so nothing outlives the
  compare for long;
- kills whatever of the group is left when the run itself ends;
- on SIGTERM (the compare stopping it) passes SIGTERM on to the group and kills the group
  ``STOP_GRACE_S`` seconds later if it is still there;
- exits the way the run did (its exit status, or killed by the same signal).

A ``RunLock`` marks a run key as being trained: an ``flock`` on
``<results root>/.running/<run key>.lock``. The supervisor inherits the lock, so it is held
until the run's processes are gone, and the kernel drops it when its holders exit however they
exit. A lock file whose lock is free is therefore stale (its compare was killed): its run is
trained again. A held one belongs to a live compare: the other compare waits for it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_GRACE_S = 25.0
POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def _signal_on_parent_death(sig: int) -> None:
    """Ask Linux to send ``sig`` when the parent exits; elsewhere the poll alone notices."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def supervise(parent: int, cmd: list[str]) -> int:
    """Run ``cmd`` supervised (see the module doc); returns its wait status."""
    _signal_on_parent_death(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request above
        return 137 << 8
    child: subprocess.Popen | None = None
    deadline: float | None = None

    def on_term(signum, frame) -> None:
        nonlocal deadline
        if child is None:
            os._exit(128 + signum)
        if os.getppid() != parent:  # the loop below reaps the run before the supervisor exits
            _kill_group(child.pid)
            return
        _kill_group(child.pid, signal.SIGTERM)
        if deadline is None:
            deadline = time.monotonic() + STOP_GRACE_S

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    child = subprocess.Popen(cmd, process_group=0)
    while True:
        # WNOWAIT: the exited run stays a zombie, so its process group id cannot be reused
        # before the group is killed below
        info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid:
            break
        if os.getppid() != parent:
            _kill_group(child.pid)
        elif deadline is not None and time.monotonic() > deadline:
            _kill_group(child.pid)
        time.sleep(POLL_S)
    _kill_group(child.pid)  # what the run left behind
    _, status = os.waitpid(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return status


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def guarded_command(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so that it dies with the calling process. Linux signals the supervisor when
    the *thread* that started it ends, so that thread must wait for the supervisor (as
    ``subprocess.run`` or ``Popen.wait`` in the same thread do)."""
    return [sys.executable, "-m", "recbench.supervise", str(os.getpid()), "--", *cmd]


# ---------------------------------------------------------------------------- run locks


class RunLock:
    """An exclusive, non-blocking ``flock`` marking that one run key is being trained."""

    def __init__(self, root: str | os.PathLike, key: str, what: str) -> None:
        self.path = Path(root) / ".running" / f"{key}.lock"
        self.what = what
        self.fd: int | None = None
        self.previous: dict | None = None  # a stale marker's content, when one was there

    def acquire(self) -> bool:
        """Take the lock; False when a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # the holder before us may have removed the file after we opened it
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        old = os.pread(fd, 4096, 0)
        try:
            self.previous = json.loads(old) if old.strip() else None
        except ValueError:
            self.previous = {"pid": None, "what": old.decode(errors="replace")}
        info = {
            "pid": os.getpid(),
            "what": self.what,
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return True

    def holder(self) -> str:
        """Who holds the lock, for a message."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info.get('pid')}, since {info.get('since')}"
        except (OSError, ValueError):
            return "another process"

    def stale_note(self) -> str | None:
        """Who left the stale marker this lock replaced (a killed compare), if anyone."""
        if not self.previous:
            return None
        return f"pid {self.previous.get('pid')}, since {self.previous.get('since')}"

    def release(self) -> None:
        """Remove the marker and drop the lock (call once the run's processes are gone)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m recbench.supervise <parent pid> -- <command ...>")
    _exit_like(supervise(int(argv[0]), argv[2:]))


if __name__ == "__main__":
    main(sys.argv[1:])
