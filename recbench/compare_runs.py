"""Training a compare's runs: each (model, seed) in its own supervised
``python -m recbench.cli train`` process, several side by side (``jobs``), a failure recorded in
the results store while the others go on.

Each child runs under ``recbench.supervise``: it dies with the compare (even a ``kill -9`` of the
compare alone), and while it trains it holds a lock on its run key, so a second compare started
beside a live one waits for that run instead of training it twice. Runs that train in one CPU
process are forked from a ``recbench.forkserver`` per job slot instead (``fork: auto``), which has
imported the training stack once and keeps the same guarantees.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from omegaconf import DictConfig

from recbench.errors import RecbenchError
from recbench.forkserver import ForkServer, ForkServerError
from recbench.report import error_line, metric_value
from recbench.results import (
    FAILED,
    FINISHED,
    append_record,
    code_version,
    read_records,
    tested,
)
from recbench.supervise import STOP_GRACE_S, RunLock, guarded_command

ERROR_TAIL_LINES = 40


def quote(value: str) -> str:
    """A Hydra override value read back verbatim (a path may hold '=', ',' or spaces)."""
    return "'" + value.replace("'", "\\'") + "'"


@dataclass
class Job:
    model: str
    seed: int
    overrides: list[str]  # train overrides, hydra.* excluded
    run_dir: Path
    key: str | None = None  # run key, None when the config does not compose
    data_key: str | None = None
    dataset: str | None = None
    error: str | None = None  # why the config does not compose
    record: dict[str, Any] | None = None  # the finished record, when this compare trained it
    process: subprocess.Popen | None = field(default=None, repr=False)  # while it trains
    lock: RunLock | None = field(default=None, repr=False)  # held while it trains
    server: ForkServer | None = field(default=None, repr=False)  # forks it, while it trains
    parts: list[Job] = field(default_factory=list, repr=False)  # runs it starts from (pretrained)
    again: bool = False  # trains though the store holds its key (a part whose weights are gone)


# ---------------------------------------------------------------------------- running


def _tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def failure_record(job: Job, error: str, returncode: int | None, command: str) -> dict:
    return {
        "status": FAILED,
        "model": job.model,
        "dataset": job.dataset,
        "seed": job.seed,
        "run_key": job.key,
        "data": {"key": job.data_key},
        "run_dir": str(job.run_dir),
        "error": error,
        "returncode": returncode,
        "command": command,
        "versions": {"recbench": code_version()},
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def _stop(job: Job) -> None:
    """Stop the child training ``job`` (if it runs): its supervisor passes SIGTERM on to the run's
    process group and kills the group after ``STOP_GRACE_S``; the supervisor itself is killed if it
    is still there 5 s later. A forked run is stopped the same way by its fork server."""
    if job.server is not None:
        job.server.stop()
        return
    proc = job.process
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_job(
    job: Job,
    hydra_overrides: list[str],
    threads: int | None = None,
    server: ForkServer | None = None,
) -> tuple[int, str, Path]:
    """Train one job in a child process; its output goes to ``<run_dir>/stdout.log``.
    ``threads`` sets the child's OpenMP threads (torch's default) unless the environment does.
    With ``server`` the child is forked from it; if the server cannot take the run, the run
    starts in a fresh interpreter (and ``server.dead`` says why)."""
    cmd = [
        sys.executable,
        "-m",
        "recbench.cli",
        "train",
        *job.overrides,
        f"hydra.run.dir={quote(str(job.run_dir))}",
        *hydra_overrides,
    ]
    command = shlex.join(["recbench", *cmd[3:]])
    job.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = job.run_dir / "stdout.log"
    env = _run_env(threads)
    lock_fd = None if job.lock is None else job.lock.fd
    if server is not None and not server.dead:
        job.server = server
        try:
            return server.run(cmd[3:], env, os.getcwd(), log_path, lock_fd), command, log_path
        except ForkServerError:
            pass  # server.dead holds why; train it the usual way
        finally:
            job.server = None
    with open(log_path, "w") as out:
        # a session of its own under a supervisor that kills the run's whole process group when
        # this process dies, even by SIGKILL; Ctrl-C reaches the run through _stop. The supervisor
        # also holds the run's lock until the run's processes are gone.
        proc = subprocess.Popen(
            guarded_command(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            pass_fds=() if lock_fd is None else (lock_fd,),
        )
        job.process = proc
        try:
            rc = proc.wait()
        except BaseException:
            _stop(job)
            raise
    return rc, command, log_path


def _release(job: Job) -> None:
    if job.lock is not None:
        job.lock.release()
        job.lock = None


def _trained_record(job: Job, rc: int, root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The record of a run that exited with ``rc``, or why there is none: a run counts as
    trained only once its record is in the store, so "✓" always means a report will find it."""
    metrics = job.run_dir / "metrics.json"
    try:
        record = json.loads(metrics.read_text())
    except (OSError, ValueError) as exc:
        if rc != 0:
            return None, None
        return None, f"the run exited 0 but its {metrics} cannot be read: {exc}"
    ident = (record.get("run_dir"), record.get("finished_at"))
    stored = read_records(root, run_key=record.get("run_key"), status=FINISHED)
    in_store = any((r.get("run_dir"), r.get("finished_at")) == ident for r in stored)
    if rc != 0:
        # killed after its record was stored (an OOM kill or a signal during shutdown): the
        # run finished and the report will use it, so it is not a failure; an earlier run's
        # files in the folder are not this run's (they would not be this job's key)
        if in_store and tested(record) and record.get("run_key") == job.key:
            return record, None
        return None, None
    if not in_store:
        return None, (
            f"the run exited 0 but its record is not in the results store {root}; "
            f"`recbench results add {metrics}` adds it"
        )
    return record, None


def _one_cpu_process(cfg: DictConfig) -> bool:
    """Whether every run trains on CPU in one process (no GPU, DDP or nodes)."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator == "auto":
        import torch

        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    devices = trainer.get("devices", 1)
    return (
        accelerator == "cpu"
        and "ddp" not in str(trainer.get("strategy", "auto"))
        and int(trainer.get("num_nodes", 1) or 1) == 1
        and str(devices) in ("1", "auto")
    )


def parallel_runs(cfg: DictConfig, todo: list[Job] | int) -> int:
    """``jobs``: a number of runs side by side, or ``auto``: one per CPU core free of other work
    (each run then gets one thread) when every run trains on CPU in one process, else one (a
    GPU run, DDP or several nodes hold their devices themselves). ``todo``: the runs to train,
    or their number."""
    setting = cfg.jobs
    if not (isinstance(setting, str) and setting.strip().lower() == "auto"):
        return int(setting)
    count = todo if isinstance(todo, int) else len(todo)
    if not _one_cpu_process(cfg) or not count:
        return 1
    from recbench.threads import choose_threads, cpu_state

    return max(1, min(choose_threads(cpu_state()), count))


def run_threads(parallel: int) -> int | None:
    """Each run's OpenMP threads when ``parallel`` runs share the cores (None: torch's default);
    oversubscribed OpenMP threads stall."""
    return max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None


def start_fork_servers(count: int, root: Path) -> list[ForkServer]:
    """``count`` fork servers, importing in the background while the compare plans. Call from
    the thread that outlives every run (see ``ForkServer``). They get this process's
    environment, as a fresh interpreter would; each run brings its own (its threads included)."""
    servers = []
    for _ in range(count):
        log = Path(tempfile.mkstemp(prefix="recbench-forkserver-", suffix=".log")[1])
        servers.append(ForkServer(dict(os.environ), root, log))
    return servers


def close_fork_servers(servers: list[ForkServer]) -> None:
    for server in servers:
        server.close()
        server.log.unlink(missing_ok=True)


def fork_runs(cfg: DictConfig) -> bool:
    """``fork``: ``auto`` forks the runs from fork servers (``recbench.forkserver``) when every
    run trains on CPU in one process on Linux; ``false`` starts each in a fresh interpreter."""
    setting = cfg.get("fork", "auto")
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        return sys.platform.startswith("linux") and _one_cpu_process(cfg)
    return bool(setting) and sys.platform.startswith("linux")


def run_order(job: Job, seconds_of: dict[str, float]) -> tuple:
    """The order runs start in: every model's first seed before any second one, so that its
    run time is known early; then the longest known runs first, so that the end of a parallel
    compare is not one long run with the other slots idle."""
    known = seconds_of.get(job.model)
    return (known is not None, -(known or 0.0), job.seed)


def train_all(
    jobs: list[Job],
    root: Path,
    hydra_overrides: list[str],
    console,
    parallel: int = 1,
    servers: list[ForkServer] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Train ``jobs``, ``parallel`` child processes at a time, with a progress bar; a failure is
    recorded in the store and the others go on. With ``servers`` (``start_fork_servers``), each
    slot forks its runs from one of them; they are closed at the end. Returns the failure records
    and notes for the report."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    failures: list[dict[str, Any]] = []
    notes: list[str] = []
    moved: list[str] = []
    threads = run_threads(parallel)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )

    started = list(servers or [])
    free: SimpleQueue[ForkServer] = SimpleQueue()
    for server in started:
        free.put(server)

    def timed(job: Job) -> tuple[int, str, Path, float]:
        t0 = time.perf_counter()
        server = free.get() if started else None
        try:
            rc, command, log_path = train_job(job, hydra_overrides, threads, server)
        except OSError as exc:  # a full disk, a read-only folder: no run could start
            raise RecbenchError(
                f"could not start {job.model} seed {job.seed} in {job.run_dir}: "
                f"{exc.strerror or exc}; runs that finished are in the store, and rerunning "
                "the same command trains the rest"
            ) from exc
        finally:
            if server is not None:
                free.put(server)
        return rc, command, log_path, time.perf_counter() - t0

    def finish(job: Job, rc: int, command: str, log_path: Path, seconds: float) -> None:
        try:
            record, problem = _trained_record(job, rc, root)
            if record is not None:
                job.record = record
                if record.get("run_key") != job.key:
                    moved.append(f"{job.model} seed {job.seed}")
                primary = record.get("primary_metric", "auc")
                value = metric_value(record.get("test") or {}, primary)
                shown = "undefined" if value is None else f"{float(value):.4f}"
                late = f"; exit {rc} after its record was stored" if rc != 0 else ""
                say(
                    f"[green]✓[/] {job.model} seed {job.seed}: test {primary} {shown} "
                    f"({seconds:.{1 if seconds < 10 else 0}f} s{late})"
                )
            else:
                tail = _tail(log_path) or f"exit status {rc}, no output"
                if problem:
                    tail = f"{tail}\n{problem}"
                failures.append(failure_record(job, tail, rc, command))
                append_record(failures[-1], root)
                say(
                    f"[red]✗[/] {job.model} seed {job.seed} failed (exit {rc}): "
                    f"{error_line(problem or tail)}\n  log: {log_path}"
                )
        finally:
            _release(job)

    def claim(job: Job) -> bool | None:
        """Lock ``job``'s run key: True to train it, False when it is in the store by now
        (another compare trained it), None while another live compare trains it."""
        name = f"{job.model} seed {job.seed}"
        lock = RunLock(root, str(job.key), f"{name} ({job.run_dir})")
        try:
            free_to_train = lock.acquire()
        except OSError as exc:
            raise RecbenchError(
                f"could not mark {name} as being trained ({lock.path}): {exc.strerror or exc}"
            ) from exc
        if not free_to_train:
            if name not in waiting:
                waiting.add(name)
                say(
                    f"[yellow]…[/] {name} is being trained by another compare "
                    f"({lock.holder()}); waiting for it"
                )
            return None
        stored = read_records(root, run_key=job.key, status=FINISHED, stale=False)
        if not job.again and any(tested(r) for r in stored):
            lock.release()
            say(f"[green]✓[/] {name}: trained meanwhile by another compare; read from the store")
            return False
        stale = lock.stale_note()
        if stale:
            say(
                f"[yellow]…[/] {name}: the compare that was training it ({stale}) was killed "
                "before it finished; training it again"
            )
        job.lock = lock
        return True

    with Progress(*columns, console=console, disable=not jobs) as progress:
        bar = progress.add_task("training", total=len(jobs))
        say = progress.console.print
        queue = []
        waiting: set[str] = set()
        seconds_of: dict[str, float] = {}  # each model's first run's wall time
        for job in jobs:
            if job.error:
                failures.append(failure_record(job, job.error, None, ""))
                append_record(failures[-1], root)
                say(f"[red]✗[/] {job.model} seed {job.seed}: config error: {job.error}")
                progress.advance(bar)
            else:
                queue.append(job)
        pool = ThreadPoolExecutor(max_workers=max(1, parallel))
        running: dict[Any, Job] = {}
        try:
            while queue or running:
                busy = set(map(id, queue)) | set(map(id, running.values()))
                queue.sort(key=lambda j: run_order(j, seconds_of))
                for job in list(queue):  # the first runs no other compare is training
                    if len(running) >= max(1, parallel):
                        break
                    if any(id(p) in busy for p in job.parts):
                        continue  # a pretrained run waits for its parts' runs of its seed
                    claimed = claim(job)
                    if claimed is None:
                        continue
                    queue.remove(job)
                    if claimed:
                        running[pool.submit(timed, job)] = job
                    else:
                        progress.advance(bar)
                if not running:
                    if queue:  # every run left is being trained elsewhere
                        time.sleep(1.0)
                    continue
                names = ", ".join(f"{j.model} seed {j.seed}" for j in running.values())
                progress.update(bar, description=names)
                # never an unbounded wait: Ctrl-C may reach another thread of this process, and
                # the main thread only raises KeyboardInterrupt once it runs again
                done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running[future]
                    result = future.result()  # raising, it leaves the run's lock to be released
                    del running[future]
                    seconds_of.setdefault(job.model, result[-1])
                    finish(job, *result)
                    progress.advance(bar)
        except BaseException as exc:
            for job in running.values():
                _stop(job)
                _release(job)
            pool.shutdown(wait=False, cancel_futures=True)
            if not isinstance(exc, KeyboardInterrupt):
                raise
            say(
                "[yellow]interrupted[/]: finished runs are in the store; rerun the same "
                "command to train the rest"
            )
            sys.exit(130)
        finally:
            dead = sorted({s.dead for s in started if s.dead})
            close_fork_servers(started)
        pool.shutdown()
        for why in dead:
            say(
                f"[yellow]…[/] runs started in fresh interpreters after a fork server failed: {why}"
            )
    if moved:
        # the config or code changed under the compare (a pull, an edit): the runs are valid,
        # but their store keys are not the ones a rerun will look for
        notes.append(
            f"The config or code changed while this compare ran: {len(moved)} run(s) got "
            f"another run key than planned ({', '.join(moved)}). Their numbers are shown; "
            "a rerun plans with the current code and trains whatever does not match it."
        )
    return failures, notes
