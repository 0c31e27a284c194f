"""`recbench compare` killed with SIGKILL (the compare alone, not its process group): its
training children die with it, a rerun trains what is missing exactly once, and a second
compare started beside a live one waits for the run the first is training."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbench.results import FINISHED, read_records
from recbench.supervise import guarded_command

TINY = ["++dataset.world.n_users=300", "debug=fast", "logger=none", "threads=1"]
ONE = ["models=[lr]", "seeds=[1]"]


def _env(outputs: Path) -> dict[str, str]:
    return {**os.environ, "RECBENCH_OUTPUTS": str(outputs), "PYTHONWARNINGS": "ignore"}


def _compare_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "recbench.cli", "compare", *args, *TINY]


def _start(outputs: Path, *args: str, log: str = "compare.log") -> subprocess.Popen:
    # a session of its own, as a compare started from a shell is the leader of its own group
    return subprocess.Popen(
        _compare_cmd(*args),
        cwd=outputs,
        env=_env(outputs),
        stdout=open(outputs / log, "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _run(outputs: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _compare_cmd(*args), cwd=outputs, env=_env(outputs), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _live(text: str) -> dict[int, str]:
    """Processes (not zombies) whose command line mentions ``text``."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            out[int(p.name)] = cmd
    return out


def _trainers(outputs: Path) -> dict[int, str]:
    """The training processes of compares writing under ``outputs``, with their guards (a
    supervisor per run, or the fork servers the runs are forked from)."""
    return {
        p: c
        for p, c in _live(str(outputs)).items()
        if "recbench.cli train" in c or "recbench.forkserver" in c
    }


def _parent_and_group(pid: int) -> tuple[int | None, int | None]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None, None


def _runs(outputs: Path) -> list[int]:
    """The training processes alone, once each leads its process group: those whose guard, a
    supervisor or a fork server, is a training process of the same compare too."""
    trainers = _trainers(outputs)
    runs = []
    for p in trainers:
        parent, group = _parent_and_group(p)
        if parent in trainers and group == p:
            runs.append(p)
    return runs


def _wait_for(cond, what: str, proc: subprocess.Popen | None = None, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the compare exited ({proc.returncode}) before {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _gone(pids, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = set(_live("")) & set(pids)
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _test_table(compare_dir: Path) -> list[str]:
    md = (compare_dir / "report.md").read_text()
    section = md.split("## Test metrics\n", 1)[1].split("\n## ", 1)[0]
    return [ln for ln in section.splitlines() if ln.startswith("|")]


def _reports(outputs: Path) -> list[Path]:
    return sorted(p for p in (outputs / "compare").iterdir() if (p / "report.md").exists())


def _once_each(outputs: Path) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for r in read_records(outputs, status=FINISHED):
        counts[(r["model"], r["seed"])] = counts.get((r["model"], r["seed"]), 0) + 1
    return counts


# ---------------------------------------------------------------------------- the guard alone

_PARENT = """
import subprocess, sys, time
from recbench.supervise import guarded_command
child = subprocess.Popen(guarded_command([sys.executable, "-c", sys.argv[1], sys.argv[2]]))
time.sleep(600)
"""

# the run: starts a worker of its own (as DDP ranks or data-loader workers are), notes both pids
_RUN = """
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {worker.pid}")
time.sleep(600)
"""


def test_a_guarded_run_and_its_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, _RUN, str(pids_file)])
    try:
        text = _wait_for(lambda: pids_file.exists() and pids_file.read_text(), "the run's pids")
        run, worker = map(int, text.split())
        assert {run, worker} <= set(_live(""))
        os.kill(parent.pid, signal.SIGKILL)  # the parent alone
        parent.wait()
        assert _gone([run, worker]), "the run or its worker outlived a SIGKILLed parent"
    finally:
        parent.kill()


def test_a_guarded_run_exits_as_the_run_did() -> None:
    ok = subprocess.run(guarded_command([sys.executable, "-c", "raise SystemExit(3)"]))
    assert ok.returncode == 3
    killed = subprocess.run(
        guarded_command([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"])
    )
    assert killed.returncode == -signal.SIGKILL


# ---------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory) -> tuple[Path, str]:
    """A compare, and a second one started while the first trains ``lr`` seed 1 (its run is
    paused with SIGSTOP until the second has seen it): the outputs and the second's log."""
    outputs = tmp_path_factory.mktemp("side_by_side")
    first = _start(outputs, *ONE, log="first.log")
    second = None
    stopped: list[int] = []
    try:
        (run,) = _wait_for(lambda: _runs(outputs), "a run to start", first)
        os.killpg(run, signal.SIGSTOP)  # the run's process group: it cannot finish meanwhile
        stopped.append(run)
        second = _start(outputs, *ONE, log="second.log")
        _wait_for(
            lambda: "being trained by another compare" in (outputs / "second.log").read_text(),
            "the second compare to notice the first's run",
            second,
        )
        os.killpg(run, signal.SIGCONT)
        stopped.clear()
        for proc, log in ((first, "first.log"), (second, "second.log")):
            assert proc.wait(timeout=600) == 0, (outputs / log).read_text()[-3000:]
    finally:
        for run in stopped:
            os.killpg(run, signal.SIGCONT)
        for proc in (first, second):
            if proc is not None:
                proc.kill()
    return outputs, (outputs / "second.log").read_text()


def test_a_second_compare_waits_for_the_run_a_live_one_trains(
    side_by_side: tuple[Path, str],
) -> None:
    outputs, second_log = side_by_side
    assert "lr seed 1: trained meanwhile by another compare" in second_log
    assert _once_each(outputs) == {("lr", 1): 1}
    first_report, second_report = _reports(outputs)
    assert _test_table(first_report) == _test_table(second_report)


# fresh interpreters under recbench.supervise: what DDP runs use (slow: their own kill test)
@pytest.mark.parametrize("fork", ["fork=true", pytest.param("fork=false", marks=pytest.mark.slow)])
def test_kill_9_of_compare_kills_its_run_and_a_rerun_trains_it_once(
    side_by_side: tuple[Path, str], tmp_path: Path, fork: str
) -> None:
    """Whether the run is forked from a fork server or runs under a supervisor."""
    first = _start(tmp_path, *ONE, fork)
    try:
        (run,) = _wait_for(lambda: _runs(tmp_path), "a run to start", first)
        os.killpg(run, signal.SIGSTOP)  # a forked run is quick: it must not finish meanwhile
        trainers = _trainers(tmp_path)
        os.kill(first.pid, signal.SIGKILL)  # the compare alone, not its process group
        first.wait()
        assert _gone(trainers), f"left running: {_trainers(tmp_path)}"
        assert not _trainers(tmp_path)
        assert not _live(f"recbench.supervise {first.pid}")
        assert not _live(f"recbench.forkserver {first.pid}")
    finally:
        first.kill()
    assert not read_records(tmp_path, status=FINISHED)
    assert list((tmp_path / ".running").iterdir())  # the killed compare's marker is left

    rerun = _run(tmp_path, *ONE, fork)
    assert "was killed before it finished; training it again" in rerun.stderr
    assert _once_each(tmp_path) == {("lr", 1): 1}
    assert not list((tmp_path / ".running").iterdir())
    # the numbers of a compare that ran in one go (the first of the side-by-side pair)
    single_go = _reports(side_by_side[0])[0]
    assert _test_table(_reports(tmp_path)[-1]) == _test_table(single_go)


def test_ctrl_c_stops_a_compare_and_its_runs_at_once(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) to a compare whose two runs never end by themselves: it stops them, says
    so and exits 130 within seconds, leaving no process, no run lock and no record behind."""
    endless = ["trainer.max_epochs=100000", "callbacks.early_stopping.patience=100000"]
    proc = _start(tmp_path, "models=[lr,fm]", "seeds=1", "jobs=2", *endless)
    try:
        _wait_for(lambda: len(_runs(tmp_path)) == 2, "both runs to start", proc)
        trainers = _trainers(tmp_path)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, (tmp_path / "compare.log").read_text()[-3000:]
        assert _gone(trainers), f"left running: {_trainers(tmp_path)}"
    finally:
        proc.kill()
    assert "interrupted" in (tmp_path / "compare.log").read_text()
    assert not list((tmp_path / ".running").iterdir())
    assert not read_records(tmp_path, status=FINISHED)


@pytest.mark.slow
def test_repeated_kills_of_a_parallel_compare(tmp_path_factory) -> None:
    """Two runs at a time, the compare killed at a random moment three times, then let finish:
    every (model, seed) is in the store once, with the numbers of an uninterrupted compare."""
    args = ["models=[lr,fm]", "seeds=2", "jobs=2"]
    reference = tmp_path_factory.mktemp("reference")
    _run(reference, *args)
    outputs = tmp_path_factory.mktemp("killed")
    rng = random.Random(0)
    for i in range(3):
        proc = _start(outputs, *args, log=f"kill-{i}.log")
        try:
            _wait_for(lambda: _trainers(outputs), "a run to start", proc)
            time.sleep(rng.uniform(0.0, 8.0))
            trainers = _trainers(outputs)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert _gone(trainers), f"left running: {_trainers(outputs)}"
        finally:
            proc.kill()
        assert all(n == 1 for n in _once_each(outputs).values())
    _run(outputs, *args)
    expected = {(m, s): 1 for m in ("lr", "fm") for s in (1, 2)}
    assert _once_each(outputs) == expected
    got = json.loads((_reports(outputs)[-1] / "report.json").read_text())["models"]
    want = json.loads((_reports(reference)[-1] / "report.json").read_text())["models"]
    assert {m: v["test"] for m, v in got.items()} == {m: v["test"] for m, v in want.items()}
    assert _test_table(_reports(outputs)[-1]) == _test_table(_reports(reference)[-1])


@pytest.mark.slow
def test_kill_9_of_compare_kills_every_ddp_rank(tmp_path: Path) -> None:
    """A DDP run's ranks 1..n-1 are processes of their own (``recbench.launch``): they go too."""
    args = [*ONE, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]
    proc = _start(tmp_path, *args)
    try:
        ranks = _wait_for(
            lambda: {p: c for p, c in _live(str(tmp_path)).items() if "recbench.launch" in c},
            "rank 1 to start",
            proc,
        )
        everything = {**_trainers(tmp_path), **ranks}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _gone(everything), f"left running: {set(_live(str(tmp_path)))}"
        assert not _live(str(tmp_path))
    finally:
        proc.kill()
