"""The ``recbench`` command line as the tests run it: forked from one fork server per test session.

A fresh ``python -m recbench.cli`` spends 3–5 s importing torch, Lightning, Hydra and torchmetrics
before it does anything, and the suite runs the command line about a hundred times. ``run``
forks each command from a ``recbench.forkserver`` that imported them once (the server ``compare``
starts its runs from; ``tests/unit/test_forkserver.py`` checks that a forked run trains as a
fresh interpreter does). What stays on fresh interpreters: the tests of processes themselves
(signals, kills, a compare and its runs, torchrun), which call ``subprocess`` directly, and every
DDP rank after the first, which ``recbench.launch`` starts as its own interpreter.

``RECBENCH_TEST_FRESH=1`` runs every command in a fresh interpreter instead, as does every
command after the server failed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from recbench.forkserver import ForkServer, ForkServerError

_server: ForkServer | None = None
_broken: str | None = None


def _fork_server() -> ForkServer | None:
    """The session's server, started at the first command (None: fresh interpreters)."""
    global _server, _broken
    if _broken or os.environ.get("RECBENCH_TEST_FRESH") == "1":
        return None
    if not sys.platform.startswith("linux"):
        return None
    if _server is None:
        root = Path(tempfile.mkdtemp(prefix="recbench-test-forkserver-"))
        # the server imports torch without a thread setting (each run brings its own) and with
        # warnings off, as every command of the suite asks (PYTHONWARNINGS=ignore)
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PYTHONWARNINGS"] = "ignore"
        try:
            _server = ForkServer(env, root, root / "server.log")
            _server.wait_ready()
        except ForkServerError as exc:
            _broken, _server = str(exc), None
            return None
        atexit.register(_close, _server, root)
    return _server


def _close(server: ForkServer, root: Path) -> None:
    server.close()
    shutil.rmtree(root, ignore_errors=True)


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600.0
) -> subprocess.CompletedProcess:
    """``recbench *args`` in ``cwd`` with ``env`` (default: this process's). Forked, the
    command's stdout and stderr are one stream: both fields of the result hold all of it."""
    global _server, _broken
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    server = _fork_server()
    if server is not None:
        fd, name = tempfile.mkstemp(prefix="recbench-cli-", suffix=".log")
        os.close(fd)
        log = Path(name)
        timer = threading.Timer(timeout, server.stop)
        timer.start()
        try:
            code = server.run(list(args), env, str(cwd), log)
            text = log.read_text(errors="replace")
            return subprocess.CompletedProcess(["recbench", *args], code, text, text)
        except ForkServerError as exc:  # the server is gone: this and later commands run fresh
            _broken, _server = str(exc), None
        finally:
            timer.cancel()
            log.unlink(missing_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "recbench.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
