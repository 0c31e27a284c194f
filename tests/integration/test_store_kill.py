"""The results store under writers killed mid-record: no record a writer reported as written is
ever lost, nothing else is lost, torn lines are reported, and `recbench results check
--repair` cleans up after them."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbench.results import FINISHED, STORE_NAME, append_record, read_records, scan_store
from tests import cli

CHUNK = 97  # bytes per os.write: one record takes many writes, so a kill lands mid-record


def _chunked_writes() -> None:
    """Make this process write in small pieces with a pause between them, as a slow or nearly
    full disk would; a kill at a random moment then mostly catches a record half written."""
    real = os.write

    def piecewise(fd: int, data) -> int:
        time.sleep(0.0005)
        return real(fd, bytes(data[:CHUNK]))

    os.write = piecewise


def _writer(root: str, acks: str, worker: int, n: int) -> None:
    _chunked_writes()
    ack = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(n):
        append_record({"worker": worker, "i": i, "status": FINISHED, "pad": "x" * 1500}, root)
        # written only after append_record returned: the record is promised to be there
        while os.write(ack, f"{worker} {i}\n".encode()) <= 0:
            pass


def _acked(acks: Path) -> set[tuple[int, int]]:
    if not acks.exists():
        return set()
    return {tuple(map(int, ln.split())) for ln in acks.read_text().splitlines() if ln}


def _kill_rounds(root: Path, rounds: int, writers: int, n: int, seed: int) -> dict[str, int]:
    """``rounds`` times: ``writers`` processes append ``n`` records each side by side while one
    of them is SIGKILLed at a random moment. Checks every round, returns counts."""
    ctx = mp.get_context("fork")
    rng = random.Random(seed)
    expected: set[tuple[int, int]] = set()  # records that must be there
    allowed: set[tuple[int, int]] = set()  # records that may be there
    kills = 0
    for r in range(rounds):
        ids = [r * 100 + w for w in range(writers)]
        acks = {w: root / f"acks-{w}" for w in ids}
        procs = {w: ctx.Process(target=_writer, args=(str(root), str(acks[w]), w, n)) for w in ids}
        for p in procs.values():
            p.start()
        victim = rng.choice(ids)
        time.sleep(rng.uniform(0.02, 0.4))
        if procs[victim].is_alive():
            os.kill(procs[victim].pid, signal.SIGKILL)
            kills += 1
        for w, p in procs.items():
            p.join(timeout=120)
            assert p.exitcode == (-signal.SIGKILL if w == victim else 0), (w, p.exitcode)
        for w in ids:
            if w == victim:
                acked = _acked(acks[w])
                expected |= acked
                allowed |= {(w, i) for i in range(n)}
            else:
                assert _acked(acks[w]) == {(w, i) for i in range(n)}
                expected |= {(w, i) for i in range(n)}
                allowed |= {(w, i) for i in range(n)}
        records, damaged = scan_store(root)
        got = [(rec["worker"], rec["i"]) for rec in records]
        assert len(got) == len(set(got)), "a record was written twice"
        assert expected <= set(got), f"lost: {sorted(expected - set(got))}"
        assert set(got) <= allowed
        # each kill leaves at most one torn line, and a torn line never swallows a whole record
        assert len(damaged) <= kills and all(not d.records for d in damaged)
    return {"records": len(got), "torn": len(damaged), "kills": kills}


def test_writers_killed_mid_record_lose_nothing_promised(tmp_path: Path) -> None:
    counts = _kill_rounds(tmp_path, rounds=3, writers=4, n=25, seed=0)
    assert counts["kills"] == 3


@pytest.mark.slow
def test_many_rounds_of_killed_writers(tmp_path: Path) -> None:
    counts = _kill_rounds(tmp_path, rounds=40, writers=8, n=30, seed=1)
    assert counts["kills"] == 40
    assert counts["torn"] > 0  # the kills did catch records half written


def _torn_writer(root: str, ready) -> None:
    """Append a record but stop for good after its first bytes, holding the store's lock."""
    real = os.write

    def first_bytes_then_hang(fd: int, data) -> int:
        n = real(fd, bytes(data[:40]))
        ready.set()
        time.sleep(600)
        return n

    os.write = first_bytes_then_hang
    append_record({"model": "torn", "status": FINISHED, "pad": "x" * 500}, root)


def test_a_writer_killed_holding_the_lock_leaves_a_torn_line_the_next_append_survives(
    tmp_path: Path,
) -> None:
    append_record({"model": "lr", "status": FINISHED}, tmp_path)
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_torn_writer, args=(str(tmp_path), ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()

    append_record({"model": "fm", "status": FINISHED}, tmp_path)  # the lock died with it
    damaged: list = []
    assert [r["model"] for r in read_records(tmp_path, damaged=damaged)] == ["lr", "fm"]
    ((d,),) = [damaged]
    assert d.lineno == 2 and d.text.startswith('{"model": "torn"') and not d.records


# ---------------------------------------------------------------------------- the CLI


def _results(*args: str, root: Path) -> subprocess.CompletedProcess:
    return cli.run(
        ["results", *args], Path.cwd(), {"RECBENCH_OUTPUTS": str(root / "elsewhere")}, 120
    )


def test_results_check_and_repair_from_the_command_line(tmp_path: Path) -> None:
    good = [{"model": m, "seed": 1, "status": FINISHED} for m in ("lr", "fm", "dnn")]
    store = tmp_path / STORE_NAME
    store.write_text(
        json.dumps(good[0])
        + "\n"
        + '{"model": "mlp", "sta'  # torn, and the next record glued onto it
        + json.dumps(good[1])
        + "\n"
        + '{"model": "x", "status": "fin\n'  # torn, alone on its line
        + json.dumps(good[2])
        + "\n"
    )
    original = store.read_bytes()
    root = f"paths.root={tmp_path}"

    check = _results("check", root, root=tmp_path)
    assert check.returncode == 1, check.stderr
    assert "4 records" not in check.stdout and "3 records, 2 damaged line(s)" in check.stdout
    assert "line 2: 1 whole record(s) glued" in check.stdout and "line 3: a torn" in check.stdout
    assert "--repair" in check.stdout and "Traceback" not in check.stderr
    assert store.read_bytes() == original  # check alone changes nothing

    repair = _results("check", "--repair", root, root=tmp_path)
    assert repair.returncode == 0, repair.stderr
    assert "split 1 whole record(s)" in repair.stdout
    assert "left out the torn fragments of 2 line(s)" in repair.stdout  # lines 2 and 3
    assert [json.loads(ln) for ln in store.read_text().splitlines()] == good
    assert (tmp_path / f"{STORE_NAME}.bak").read_bytes() == original

    again = _results("check", "repair=true", root, root=tmp_path)
    assert again.returncode == 0 and "nothing to repair" in again.stdout
    assert _results("check", root, root=tmp_path).returncode == 0

    missing = _results("check", root=tmp_path)  # RECBENCH_OUTPUTS points elsewhere
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "no results store at" in missing.stderr and "paths.root=" in missing.stderr
    wrong = _results("frobnicate", root=tmp_path)
    assert wrong.returncode == 2 and "usage: recbench results" in wrong.stderr


def test_results_add_appends_a_run_once(tmp_path: Path) -> None:
    record = {"model": "fm", "seed": 2, "status": FINISHED, "run_key": "k", "run_dir": "/r"}
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(record, indent=2))
    first = _results("add", str(metrics), f"paths.root={tmp_path}", root=tmp_path)
    assert first.returncode == 0 and "added" in first.stdout, first.stderr
    second = _results("add", str(metrics), f"paths.root={tmp_path}", root=tmp_path)
    assert second.returncode == 0 and "already in the store" in second.stdout
    assert read_records(tmp_path) == [record]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    failed = _results("add", str(bad), f"paths.root={tmp_path}", root=tmp_path)
    assert failed.returncode == 2 and "not JSON" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_a_run_that_cannot_store_its_record_fails_and_the_record_is_added_later(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / STORE_NAME).symlink_to("/dev/full")  # every write: ENOSPC, as on a full disk
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "recbench.cli",
            "train",
            "model=lr",
            "++dataset.world.n_users=300",
            "debug=fast",
            "logger=none",
            "threads=1",
            f"paths.results={store}",
            f"hydra.run.dir={run_dir}",
        ],
        env={**os.environ, "RECBENCH_OUTPUTS": str(tmp_path), "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    metrics = run_dir / "metrics.json"
    assert train.returncode != 0, "a run whose record was not stored must not exit 0"
    assert "No space left on device" in train.stderr and "Traceback" not in train.stderr
    assert f"recbench results add {metrics}" in train.stderr
    record = json.loads(metrics.read_text())
    assert record["status"] == FINISHED and record["model"] == "lr"

    (store / STORE_NAME).unlink()  # space again
    add = _results("add", str(metrics), f"paths.root={store}", root=tmp_path)
    assert add.returncode == 0, add.stderr
    assert read_records(store) == [record]


# `recbench train` in which Ctrl-C lands at one step of the run: KeyboardInterrupt raised by
# `_metric_value` once the record is saved (the sweep objective, read after the save), or by
# `_print_summary` (the step before the save)
_INTERRUPTED_TRAIN = """
import sys

import recbench.train as train
from recbench.cli import main

saved = []
save = train.save_run_record


def save_and_note(*args, **kwargs):
    save(*args, **kwargs)
    saved.append(True)


def interrupt_after(real, ready):
    def step(*args, **kwargs):
        if ready():
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return step


train.save_run_record = save_and_note
if sys.argv[1] == "after-save":
    train._metric_value = interrupt_after(train._metric_value, lambda: saved)
else:
    train._print_summary = interrupt_after(train._print_summary, lambda: True)
main(sys.argv[2:])
"""


def _interrupted_train(when: str, run_dir: Path, root: Path) -> subprocess.CompletedProcess:
    args = ["train", "model=lr", "++dataset.world.n_users=300", "debug=fast", "logger=none"]
    args += ["threads=1", f"hydra.run.dir={run_dir}"]
    return subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_TRAIN, when, *args],
        env={**os.environ, "RECBENCH_OUTPUTS": str(root), "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ctrl_c_after_the_record_is_saved_says_the_run_counts(tmp_path: Path) -> None:
    after = _interrupted_train("after-save", tmp_path / "after", tmp_path)
    assert after.returncode == 130, after.stderr[-3000:]
    assert "Traceback" not in after.stderr
    assert after.stderr.strip().splitlines()[-1] == (
        f"interrupted after the run stored its results: the run in {tmp_path / 'after'} is "
        "finished and in the results store (recbench compare reuses it)"
    )
    (record,) = read_records(tmp_path)
    assert record["status"] == FINISHED and record["run_dir"] == str(tmp_path / "after")
    assert json.loads((tmp_path / "after" / "metrics.json").read_text()) == record

    # before the save: nothing recorded, and the interrupt ends the run as it always did
    before = _interrupted_train("before-save", tmp_path / "before", tmp_path)
    assert before.returncode == -signal.SIGINT, before.stderr[-3000:]
    assert before.stderr.rstrip().endswith("KeyboardInterrupt")
    assert "interrupted after" not in before.stderr
    assert not (tmp_path / "before" / "metrics.json").exists()
    assert len(read_records(tmp_path)) == 1
