"""The results store, run keys, and compare's command line and record collection (the report
and its paired bootstrap: tests/unit/test_report.py)."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
import stat
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import recbench.results as results
from recbench.cli import config_dir
from recbench.results import (
    FAILED,
    FINISHED,
    STORE_NAME,
    StoreError,
    StoreLockError,
    StoreWriteError,
    add_records,
    append_record,
    code_version,
    is_stale,
    read_records,
    repair_store,
    run_key,
    save_run_record,
    scan_store,
    write_json,
)

# ---------------------------------------------------------------------------- store


def _writer(root: str, worker: int, n: int) -> None:
    for i in range(n):
        # a long payload makes interleaved writes visible as broken JSON lines
        append_record({"worker": worker, "i": i, "status": FINISHED, "pad": "x" * 5000}, root)


def test_concurrent_appends_keep_every_record_whole(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = (tmp_path / STORE_NAME).read_text().splitlines()
    assert len(lines) == 200
    parsed = [json.loads(line) for line in lines]  # every line is one whole record
    assert sorted((r["worker"], r["i"]) for r in parsed) == [
        (w, i) for w in range(4) for i in range(50)
    ]
    assert len(read_records(tmp_path)) == 200


def _store_bytes(root: Path) -> bytes:
    return (root / STORE_NAME).read_bytes()


def test_a_torn_line_is_reported_and_the_next_record_starts_a_line_of_its_own(
    tmp_path: Path, caplog
) -> None:
    append_record({"model": "lr", "status": FINISHED}, tmp_path)
    append_record({"model": "fm", "status": FINISHED}, tmp_path)
    with open(tmp_path / STORE_NAME, "a") as fh:
        fh.write('{"model": "mlp", "status": "fini')  # a writer killed mid-line
    append_record({"model": "dnn", "status": FINISHED}, tmp_path)

    damaged: list = []
    with caplog.at_level(logging.WARNING, logger="recbench.results"):
        records = read_records(tmp_path, damaged=damaged)
    assert [r["model"] for r in records] == ["lr", "fm", "dnn"]
    assert [(d.lineno, d.records) for d in damaged] == [(3, [])]
    assert f"{STORE_NAME}:3:" in caplog.text and "torn write" in caplog.text
    lines = _store_bytes(tmp_path).splitlines()
    assert json.loads(lines[3])["model"] == "dnn"  # not glued onto the fragment


def test_records_glued_by_an_old_torn_write_are_read_and_repaired(tmp_path: Path) -> None:
    whole = [{"model": m, "seed": s, "status": FINISHED} for m, s in [("lr", 1), ("fm", 2)]]
    torn_prefix = '{"model": "mlp", "status": "finished", "test": {"auc": 0.7}'  # ends on "}"
    store = tmp_path / STORE_NAME
    store.write_text(
        json.dumps(whole[0])
        + "\n"
        + torn_prefix
        + json.dumps(whole[1])  # the next writer's record, glued onto the fragment
        + json.dumps({"model": "dnn", "status": FAILED})  # and one more, glued "}{"
        + "\n"
        + '{"model": "x", "stat'  # a torn last line
    )
    original = store.read_bytes()
    damaged: list = []
    read = read_records(tmp_path, damaged=damaged)
    # the inner {"auc": 0.7} of the torn record is not taken for a record
    assert [r["model"] for r in read] == ["lr", "fm", "dnn"]
    assert [(d.lineno, len(d.records)) for d in damaged] == [(2, 2), (3, 0)]

    done = repair_store(tmp_path)
    assert (done.kept, done.recovered) == (1, 2)
    # both lines lose a fragment: the torn prefix before line 2's records, and line 3
    assert [d.lineno for d in done.dropped] == [2, 3]
    assert done.backup == tmp_path / f"{STORE_NAME}.bak"
    assert done.backup.read_bytes() == original  # the fragments are kept there
    assert [json.loads(ln)["model"] for ln in store.read_text().splitlines()] == [
        "lr",
        "fm",
        "dnn",
    ]
    assert store.read_bytes().endswith(b"\n")
    assert scan_store(tmp_path) == (read, [])
    assert repair_store(tmp_path).backup is None  # nothing left to repair: untouched
    append_record({"model": "deepfm", "status": FINISHED}, tmp_path)
    assert len(read_records(tmp_path)) == 4


def test_a_store_shared_through_a_symlink_is_repaired_where_it_points(tmp_path: Path) -> None:
    shared, root = tmp_path / "shared", tmp_path / "root"
    shared.mkdir()
    root.mkdir()
    append_record({"model": "lr", "status": FINISHED}, shared)
    with open(shared / STORE_NAME, "a") as fh:
        fh.write('{"model": "x", "stat')  # a torn last line
    (root / STORE_NAME).symlink_to(shared / STORE_NAME)

    done = repair_store(root)
    assert (root / STORE_NAME).is_symlink()  # still the shared store, not a copy beside it
    assert done.backup == shared / f"{STORE_NAME}.bak"
    assert scan_store(shared) == ([{"model": "lr", "status": FINISHED}], [])
    append_record({"model": "fm", "status": FINISHED}, root)
    assert [r["model"] for r in read_records(shared)] == ["lr", "fm"]


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch) -> None:
    append_record({"model": "lr", "status": FINISHED}, tmp_path)
    real = os.write
    calls = []

    def half(fd: int, data) -> int:
        calls.append(len(data))
        return real(fd, bytes(data[: max(1, len(data) // 2)]))

    monkeypatch.setattr(os, "write", half)
    record = {"model": "fm", "status": FINISHED, "pad": "x" * 1000}
    append_record(record, tmp_path)
    monkeypatch.undo()
    assert len(calls) > 5  # it really was written in pieces
    assert read_records(tmp_path)[-1] == record
    assert scan_store(tmp_path)[1] == []


@pytest.mark.parametrize("failure", ["enospc", "no_progress", "enospc_midway"])
def test_a_failed_append_is_loud_and_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch, failure: str
) -> None:
    append_record({"model": "lr", "status": FINISHED}, tmp_path)
    before = _store_bytes(tmp_path)
    real = os.write
    calls = []

    def broken(fd: int, data) -> int:
        calls.append(len(data))
        if failure == "no_progress":
            return 0
        if failure == "enospc_midway" and len(calls) == 1:
            return real(fd, bytes(data[:100]))  # part of the line went out, then the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(StoreWriteError, match="could not append") as info:
        append_record({"model": "fm", "status": FINISHED, "pad": "x" * 1000}, tmp_path)
    monkeypatch.undo()
    assert str(tmp_path / STORE_NAME) in str(info.value)
    assert _store_bytes(tmp_path) == before  # the partial line was cut off again
    append_record({"model": "dnn", "status": FINISHED}, tmp_path)
    assert [r["model"] for r in read_records(tmp_path)] == ["lr", "dnn"]
    assert scan_store(tmp_path)[1] == []


def test_a_run_whose_record_cannot_be_stored_fails_and_says_how_to_add_it(
    tmp_path: Path, monkeypatch
) -> None:
    import recbench.results as results

    record = {"model": "fm", "status": FINISHED, "run_key": "k", "run_dir": "/r", "seed": 1}
    metrics = tmp_path / "run" / "metrics.json"
    metrics.parent.mkdir()
    real = results._append_line

    def full_disk(path, line):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "_append_line", full_disk)
    with pytest.raises(StoreWriteError) as info:
        save_run_record(record, metrics, tmp_path)
    message = str(info.value)
    assert "No space left on device" in message
    assert f"recbench results add {metrics}" in message
    assert json.loads(metrics.read_text()) == record
    assert read_records(tmp_path) == []

    monkeypatch.setattr(results, "_append_line", real)
    assert add_records([metrics], tmp_path) == [(metrics, "added")]
    assert add_records([metrics], tmp_path) == [(metrics, "already in the store")]
    assert read_records(tmp_path) == [record]


def _slow_adder(metrics: str, root: str, start, out) -> None:
    real = Path.read_text

    def slow(self: Path, *args, **kwargs) -> str:
        text = real(self, *args, **kwargs)
        time.sleep(0.5)  # a slow disk: the other add runs meanwhile
        return text

    Path.read_text = slow
    start.wait(30)
    out.put(add_records([metrics], root)[0][1])


def test_two_adds_of_one_run_at_once_store_it_once(tmp_path: Path) -> None:
    record = {
        "model": "fm",
        "status": FINISHED,
        "run_key": "k",
        "run_dir": "/r",
        "finished_at": "t",
    }
    metrics = tmp_path / "run" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(record))
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_slow_adder, args=(str(metrics), str(tmp_path), start, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    said = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert said == ["added", "already in the store"]
    assert read_records(tmp_path) == [record]


def _hold_lock(path: str, held, release) -> None:
    import fcntl

    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.set()
    release.wait(60)


def test_a_lock_held_too_long_fails_each_store_use_in_one_line_naming_the_store(
    tmp_path: Path, monkeypatch
) -> None:
    shared, root = tmp_path / "shared", tmp_path / "root"
    root.mkdir()
    append_record({"model": "lr", "status": FINISHED}, shared)
    (root / STORE_NAME).symlink_to(shared / STORE_NAME)  # one store, the same lock
    metrics = tmp_path / "run" / "metrics.json"
    metrics.parent.mkdir()
    record = {"model": "fm", "status": FINISHED, "run_key": "k", "run_dir": "/r", "seed": 1}
    ctx = mp.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(shared / STORE_NAME), held, release))
    holder.start()
    try:
        assert held.wait(30)
        monkeypatch.setattr(results, "LOCK_TIMEOUT_S", 0.3)
        t0 = time.monotonic()
        with pytest.raises(StoreWriteError) as run:
            save_run_record(record, metrics, root)
        assert time.monotonic() - t0 < 10
        message = str(run.value)
        assert f"lock was held by pid {holder.pid}" in message and "for over 0.3 s" in message
        assert f"recbench results add {metrics}" in message and "\n" not in message
        for use in (
            lambda: add_records([metrics], root),
            lambda: read_records(root),
            lambda: repair_store(root),
        ):
            with pytest.raises(StoreLockError) as info:
                use()
            message = str(info.value)
            assert f"{(shared / STORE_NAME).resolve()}" in message and " is locked: " in message
            assert f"pid {holder.pid}" in message and "let that process finish" in message
    finally:
        release.set()
        holder.join(timeout=30)
    assert add_records([metrics], root) == [(metrics, "added")]
    assert [r["model"] for r in read_records(shared)] == ["lr", "fm"]


def test_an_interrupt_mid_write_leaves_the_store_as_it_was(tmp_path: Path, monkeypatch) -> None:
    append_record({"model": "lr", "status": FINISHED}, tmp_path)
    before = _store_bytes(tmp_path)
    real = os.write

    def interrupted(fd: int, data) -> int:
        real(fd, bytes(data[:100]))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        append_record({"model": "fm", "status": FINISHED, "pad": "x" * 1000}, tmp_path)
    monkeypatch.undo()
    assert _store_bytes(tmp_path) == before  # no torn line for readers to trip over
    assert scan_store(tmp_path)[1] == []


def test_a_new_store_and_a_metrics_file_are_durable_in_their_folders(
    tmp_path: Path, monkeypatch
) -> None:
    real = os.fsync
    synced_dirs = []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store, run = tmp_path / "store", tmp_path / "run"
    run.mkdir()
    append_record({"model": "lr", "status": FINISHED}, store)
    write_json(run / "metrics.json", {"model": "lr"})
    # a power loss right after must not take away the new names with their contents
    assert synced_dirs == [store, run]


def test_add_reads_every_file_before_it_adds_any(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": "lr", "status": FINISHED, "run_key": "a"}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StoreError, match=f"{bad} is not JSON"):
        add_records([good, bad], tmp_path)
    assert read_records(tmp_path) == []


def test_an_add_the_disk_stops_half_way_says_what_it_added_and_reruns_cleanly(
    tmp_path: Path, monkeypatch
) -> None:
    paths = []
    for m in ("lr", "fm", "mlp"):
        paths.append(tmp_path / f"{m}.json")
        paths[-1].write_text(json.dumps({"model": m, "status": FINISHED, "run_key": m}))
    real = os.write
    writes = []

    def fills_up(fd: int, data) -> int:
        writes.append(fd)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", fills_up)
    with pytest.raises(StoreWriteError) as info:
        add_records(paths, tmp_path)
    monkeypatch.undo()
    message = str(info.value)
    assert "No space left on device" in message and f"added before that: {paths[0]}" in message
    assert "run the same command again" in message
    assert [r["model"] for r in read_records(tmp_path)] == ["lr"]
    assert [what for _, what in add_records(paths, tmp_path)] == [
        "already in the store",
        "added",
        "added",
    ]
    assert [r["model"] for r in read_records(tmp_path)] == ["lr", "fm", "mlp"]


def test_filters_and_stale_records(tmp_path: Path) -> None:
    now = {"recbench": code_version()}
    append_record({"model": "lr", "dataset": "a", "status": FINISHED, "versions": now}, tmp_path)
    append_record({"model": "fm", "dataset": "a", "status": FAILED, "versions": now}, tmp_path)
    old = {"model": "lr", "dataset": "a", "status": FINISHED, "versions": {"recbench": "0.0.1"}}
    append_record(old, tmp_path)
    append_record({"model": "lr", "dataset": "b", "status": FINISHED, "versions": now}, tmp_path)

    assert is_stale(old) and not is_stale({"versions": now})
    assert is_stale({"model": "lr"})  # no version: cannot be trusted either
    assert len(read_records(tmp_path, model="lr")) == 3
    assert len(read_records(tmp_path, model=["lr", "fm"], dataset="a")) == 3
    assert [r["model"] for r in read_records(tmp_path, status=FAILED)] == ["fm"]
    assert read_records(tmp_path, stale=True) == [old]
    assert len(read_records(tmp_path, model="lr", dataset="a", stale=False)) == 1
    assert read_records(tmp_path / "nowhere") == []


@pytest.fixture(scope="module")
def compose_train():
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield lambda *o: compose(config_name="train", overrides=["paths.run_dir=/x", *o])


def test_run_key_ignores_outputs_and_follows_what_changes_numbers(compose_train) -> None:
    base = run_key(compose_train("model=lr", "seed=1"), "data-a")
    same = [
        compose_train("model=lr", "seed=1", "paths.root=/elsewhere", "paths.run_dir=/y"),
        compose_train("model=lr", "seed=1", "logger=none"),
        compose_train("model=lr", "seed=1", "trainer.enable_progress_bar=false"),
    ]
    assert all(run_key(c, "data-a") == base for c in same)
    assert run_key(compose_train("model=fm", "seed=1"), "data-a") != base
    assert run_key(compose_train("model=lr", "seed=2"), "data-a") != base
    assert run_key(compose_train("model=lr", "seed=1"), "data-b") != base
    assert run_key(compose_train("model=lr", "seed=1", "trainer.max_epochs=3"), "data-a") != base


def test_run_key_ignores_the_thread_count(compose_train) -> None:
    # threads only changes the speed: a compare with threads=1 reuses a run trained with auto
    base = run_key(compose_train("model=lr", "seed=1"), "data-a")
    assert run_key(compose_train("model=lr", "seed=1", "threads=1"), "data-a") == base
    assert run_key(compose_train("model=lr", "seed=1", "threads=null"), "data-a") == base


def test_run_key_includes_the_code_version(compose_train, monkeypatch) -> None:
    cfg = compose_train("model=lr")
    before = run_key(cfg, "d")
    monkeypatch.setattr("recbench.__version__", "999.0")
    assert run_key(cfg, "d") != before


# ---------------------------------------------------------------------------- compare's arguments


def test_compare_command_line_sugar() -> None:
    from recbench.compare import normalise_args
    from recbench.compare_plan import seed_list, train_overrides

    assert normalise_args(
        ["--report-only", "extra=[trainer.max_epochs=3,model.hidden=[64,32]]"]
    ) == [
        "report_only=true",
        'extra=["trainer.max_epochs=3","model.hidden=[64,32]"]',
    ]
    assert normalise_args(['extra=["debug=fast"]', "seeds=2"]) == [
        'extra=["debug=fast"]',
        "seeds=2",
    ]
    assert train_overrides(
        [
            "lineage=ctr",
            "seeds=3",
            "models=[lr]",
            "extra=[]",
            "dataset=x",
            "trainer.max_epochs=2",
            "++dataset.world.n_users=9",
        ]
    ) == ["trainer.max_epochs=2", "++dataset.world.n_users=9"]
    with pytest.raises(Exception, match="models="):
        train_overrides(["model=fm"])
    assert seed_list(3) == [1, 2, 3] and seed_list([7, 42]) == [7, 42]


def test_collect_uses_what_this_compare_trained_then_the_store(tmp_path: Path) -> None:
    from recbench.compare import Job, collect

    jobs = [Job(m, s, [], tmp_path, key=f"{m}{s}") for m in ("lr", "fm") for s in (1, 2)]
    jobs[0].record = {"model": "lr", "seed": 1, "run_key": "other"}  # config moved mid-compare
    test = {"auc": 0.7}
    store = [
        {"run_key": "lr2", "status": FINISHED, "model": "lr", "seed": 2, "n": 1, "test": test},
        {"run_key": "lr2", "status": FINISHED, "model": "lr", "seed": 2, "n": 2, "test": test},
        {"run_key": "fm1", "status": FAILED, "model": "fm", "seed": 1},
        # finished with test=false: the same run key, no test metrics; neither used nor failed
        {"run_key": "fm2", "status": FINISHED, "model": "fm", "seed": 2, "test": {}},
    ]
    runs, failures, missing = collect(jobs, store, report_only=True)
    assert runs["lr"][0]["run_key"] == "other" and runs["lr"][1]["n"] == 2  # the latest rerun
    assert runs["fm"] == [] and [f["seed"] for f in failures] == [1] and missing == [("fm", 2)]
    assert collect(jobs, store, report_only=False)[1:] == ([], [])


def test_a_record_whose_folder_another_run_took_over_is_known(tmp_path: Path) -> None:
    from recbench.results import moved_away, tested

    run = {"run_key": "k1", "seed": 1, "finished_at": "t1", "run_dir": str(tmp_path), "test": {}}
    assert not tested(run | {"status": FINISHED})  # test=false: nothing to report
    assert tested(run | {"status": FINISHED, "test": {"auc": 0.7}})
    assert moved_away(run) == ""  # no metrics.json: nothing to compare with
    (tmp_path / "metrics.json").write_text(json.dumps(run))
    assert moved_away(run) == ""
    later = {**run, "model": "mlp", "run_key": "k2", "finished_at": "t2"}  # overwrite=true
    (tmp_path / "metrics.json").write_text(json.dumps(later))
    assert "now holds another run (mlp, seed 1, finished t2)" in moved_away(run)
