"""Append-only results store: one JSON line per run under ``<outputs root>/results.jsonl``.

Every finished run appends its record (``recbench.train``); ``compare`` appends a record with
``status: failed`` for a run that did not finish. Reports and resume read the store only
through ``read_records``.

A finished record is never lost: each append writes its whole line under an exclusive lock,
checks every byte went out (a full disk raises ``StoreWriteError`` and the partial line is cut
off again), and starts on a fresh line when a writer killed mid-write left a torn one. Every
writer (a run's record, compare's failures, ``results add``, ``results check --repair``) takes
the same lock, the store file's own ``flock``, so ``results add`` checks for a record and appends
it as one step; a lock still taken after ``LOCK_TIMEOUT_S`` raises ``StoreLockError``. Readers
report every line they cannot read (file and line number) and carry on; a line where an older
torn write glued records together is split back into its whole records. ``recbench results
check --repair`` rewrites the store without its damaged lines, keeping the original as a backup.

A record is *stale* when it was written by another recbench version than the running one: its
numbers may come from different code, so it is shown as stale and never reused. ``run_key``
includes the version for the same reason, so a stale record never matches a current key.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbench.errors import RecbenchError

STORE_NAME = "results.jsonl"
LOCK_TIMEOUT_S = 60.0  # how long any reader or writer waits for the store's lock

FINISHED = "finished"
FAILED = "failed"

log = logging.getLogger("recbench.results")


class StoreError(RecbenchError):
    """The results store cannot be read or written as asked."""


class StoreWriteError(StoreError):
    """A record could not be appended; the store is left as it was before the append."""


class StoreLockError(StoreError):
    """The store's lock stayed taken for ``LOCK_TIMEOUT_S``: nothing was read or written."""

    def __init__(self, path: Path, waited: float, holder: str) -> None:
        self.path = path
        real = path.resolve()
        where = f"{path} (a link to {real})" if real != path.absolute() else str(path)
        self.strerror = f"its lock was held by {holder} for over {waited:g} s"
        super().__init__(
            f"the results store {where} is locked: {self.strerror}; let that process finish or "
            "stop it, then try again"
        )


def code_version() -> str:
    """The version every record and run key carries; a change marks older records stale."""
    from recbench import __version__

    return __version__


def store_path(root: str | os.PathLike) -> Path:
    return Path(root) / STORE_NAME


# ---------------------------------------------------------------------------- locking


def _holder(st: os.stat_result) -> str:
    """Who holds a ``flock`` on the file ``st`` describes, from ``/proc/locks`` (Linux), for a
    message; "another process" where that cannot tell."""
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == ident:
            pid = fields[4]
            if not pid.isdigit() or pid == "0":  # a process outside this pid namespace
                return "another process"
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                command = " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
            except OSError:
                return f"pid {pid}"
            return f"pid {pid} ({_shorten(command.encode(), 80)})"
    return "another process"


def _flock(fd: int, how: int, path: Path, deadline: float) -> None:
    """``flock`` ``fd``, waiting until ``deadline`` (``time.monotonic``) at most: a process that
    hangs holding the lock (stopped, or on a stuck file system) never hangs its waiters.

    The wait is the kernel's own blocking ``flock``, in a helper thread on a duplicate of ``fd``
    (the lock belongs to the open file, which both share): waiters queue as they would without
    a deadline. Polling instead let a writer that had just released the lock take it again at
    once, so one of several parallel writers appended all its records while the rest slept."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    waiter = os.dup(fd)
    got, gave_up, guard = threading.Event(), threading.Event(), threading.Lock()

    def wait() -> None:
        try:
            fcntl.flock(waiter, how)
            with guard:
                if gave_up.is_set():  # too late: let go of it again
                    fcntl.flock(waiter, fcntl.LOCK_UN)
                else:
                    got.set()
        finally:
            os.close(waiter)  # the lock stays with ``fd``'s open file where it was taken

    threading.Thread(target=wait, name="results-store-lock", daemon=True).start()
    if got.wait(max(0.0, deadline - time.monotonic())):
        return
    with guard:
        if got.is_set():
            return
        gave_up.set()
    raise StoreLockError(path, LOCK_TIMEOUT_S, _holder(os.fstat(fd)))


@contextmanager
def _locked(path: Path, flags: int, how: int) -> Iterator[int]:
    """``path`` opened with ``flags`` and ``flock``-ed with ``how`` (``StoreLockError`` after
    ``LOCK_TIMEOUT_S``). A repair swaps the store's file while others wait for its lock: whoever
    then gets the old file's lock opens the new one, so no append lands in the replaced file.
    The lock is the file's own, so every outputs root that links to one store shares it."""
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        try:
            _flock(fd, how, path, deadline)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
                current = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # closing drops the lock


# ---------------------------------------------------------------------------- writing


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``: ``os.write`` may write less than asked (a signal, a nearly
    full disk); a write that makes no progress is an error, never a silent short record."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, f"no progress writing the last {len(view)} bytes")
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    """Make the entry of ``path`` in its folder durable, so a new or renamed file outlives a
    power loss as its contents do (a folder this user cannot open, or a file system that cannot
    sync one, is left as it is)."""
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except PermissionError:
        return
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(dir_fd)


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, default=str) + "\n").encode()


def _append_at(fd: int, path: Path, line: bytes) -> None:
    """Append ``line`` to the store open as ``fd``, whose exclusive lock the caller holds. On any
    failure, an interrupt included, the store is cut back to what it was."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        line = b"\n" + line  # a writer was killed mid-line: never glue onto its fragment
    try:
        _write_all(fd, line)
        os.fsync(fd)
        if not size:
            _fsync_dir(path.resolve())  # a new store: its name is as durable as its first line
    except BaseException:
        try:  # cut the partial line off again; the lock keeps everyone else out meanwhile
            os.ftruncate(fd, size)
        except OSError:
            pass  # left torn: the next append starts a fresh line, readers report it
        raise


def _append_line(path: Path, line: bytes) -> None:
    with _locked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, fcntl.LOCK_EX) as fd:
        _append_at(fd, path, line)


def append_record(record: dict[str, Any], root: str | os.PathLike) -> Path:
    """Append one record as one whole line under an exclusive lock, so parallel writers (sweep
    jobs, compares sharing one outputs root) never interleave lines. Raises ``StoreWriteError``
    (and leaves the store as it was) when the line cannot be written in full or the lock stays
    taken."""
    path = store_path(root)
    line = _encode(record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _append_line(path, line)
    except StoreLockError as exc:
        raise StoreWriteError(
            f"could not append a record to the results store {path}: {exc.strerror}. The store "
            "is as it was before; let that process finish or stop it, then add the record again."
        ) from exc
    except OSError as exc:
        raise StoreWriteError(
            f"could not append a record to the results store {path}: "
            f"{exc.strerror or exc} (errno {exc.errno}). The store is as it was before; free "
            "space or fix permissions, then add the record again."
        ) from exc
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON through a temporary file renamed over ``path``: a reader
    sees the old file or the whole new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(obj, indent=2, default=str))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path)


def save_run_record(
    record: dict[str, Any], metrics_path: str | os.PathLike, root: str | os.PathLike | None
) -> None:
    """A finished run's record into ``metrics_path`` and, unless ``root`` is None, the store.
    Both are tried; if either fails, ``StoreWriteError`` says what was kept where and how to add
    the record to the store later, so a run never ends "successfully" without its record."""
    metrics_path = Path(metrics_path)
    problems = []
    try:
        write_json(metrics_path, record)
        in_file = True
    except OSError as exc:
        in_file = False
        problems.append(f"{metrics_path} could not be written ({exc.strerror or exc})")
    in_store = root is None
    if root is not None:
        try:
            append_record(record, root)
            in_store = True
        except StoreWriteError as exc:
            cause = exc.__cause__
            reason = getattr(cause, "strerror", None) or cause or exc
            problems.append(
                f"it could not be appended to the results store {store_path(root)} ({reason})"
            )
    if not problems:
        return
    if in_file and root is not None:
        where = (
            f"Its record is in {metrics_path}: once the store is writable, add it with "
            f"`recbench results add {metrics_path}`."
        )
    elif in_store and root is not None:
        where = "Its record is in the results store."
    else:
        where = "The record, to save by hand: " + json.dumps(record, default=str)
    raise StoreWriteError(
        "the run finished but its record was not saved: " + "; ".join(problems) + ". " + where
    )


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class DamagedLine:
    """A store line that is not one whole record."""

    path: Path
    lineno: int  # 1-based
    text: str  # the line, shortened for messages
    records: list[dict[str, Any]] = field(default_factory=list)  # whole records found in it

    def __str__(self) -> str:
        if self.records:
            what = (
                f"{len(self.records)} whole record(s) glued to a torn one (read; "
                "`recbench results check --repair` splits them onto their own lines)"
            )
        else:
            what = "no whole record (a torn write: the writer was killed or the disk was full)"
        return f"{self.path}:{self.lineno}: {what}: {self.text!r}"


_OPEN_BRACE = re.compile(r"\{")


def _records_in(text: str) -> list[dict[str, Any]]:
    """Every whole record in a damaged line, in order: a torn write followed by the next
    writer's line on the same line (``{"mod{"model": ...}``), or records glued ``}{``. Only
    objects with a ``status`` count, so an inner object of a torn record (``"test": {...}``) is
    never taken for a record."""
    return _split_line(text)[0]


def _split_line(text: str) -> tuple[list[dict[str, Any]], bool]:
    """``_records_in``, and whether any text of the line lies outside those records (a torn
    write's fragment, which a repair leaves out)."""
    decoder = json.JSONDecoder()
    out, pos, covered = [], 0, 0
    rest = False
    while (m := _OPEN_BRACE.search(text, pos)) is not None:
        try:
            obj, end = decoder.raw_decode(text, m.start())
        except ValueError:
            pos = m.start() + 1
            continue
        if isinstance(obj, dict) and "status" in obj:
            rest = rest or bool(text[covered : m.start()].strip())
            out.append(obj)
            pos = covered = end
        else:
            pos = m.start() + 1
    return out, rest or bool(text[covered:].strip())


def _shorten(raw: bytes, width: int = 120) -> str:
    text = raw.decode("utf-8", errors="replace").rstrip("\n")
    return text if len(text) <= width else f"{text[: width // 2]} … {text[-width // 2 :]}"


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _read_lines(path: Path) -> list[bytes]:
    """The store's lines, read under a shared lock so an append in progress is never half seen."""
    try:
        with _locked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd, os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot read the results store {path}: {exc.strerror or exc}") from exc


def scan_store(root: str | os.PathLike) -> tuple[list[dict[str, Any]], list[DamagedLine]]:
    """Every record of the store in written order, and the lines that are not one whole record
    (whatever whole records those still hold are among the records)."""
    path = store_path(root)
    return _scan(path, _read_lines(path))


def _scan(path: Path, lines: list[bytes]) -> tuple[list[dict[str, Any]], list[DamagedLine]]:
    records: list[dict[str, Any]] = []
    damaged: list[DamagedLine] = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        rec = _parse_line(raw)
        if rec is not None:
            records.append(rec)
            continue
        found = _records_in(raw.decode("utf-8", errors="replace"))
        records.extend(found)
        damaged.append(DamagedLine(path, lineno, _shorten(raw), found))
    return records, damaged


_warned: set[tuple[str, int, str]] = set()


def _warn(damaged: list[DamagedLine]) -> None:
    """Log each damaged line once per process (a compare reads the store several times)."""
    for d in damaged:
        key = (str(d.path), d.lineno, d.text)
        if key not in _warned:
            _warned.add(key)
            log.warning("results store: %s; `recbench results check` lists them all", d)


def read_records(
    root: str | os.PathLike,
    model: str | list[str] | None = None,
    dataset: str | None = None,
    status: str | None = None,
    run_key: str | None = None,
    stale: bool | None = None,
    damaged: list[DamagedLine] | None = None,
) -> list[dict[str, Any]]:
    """Records of the store in the order they were written, filtered by every argument given.

    ``stale=False`` keeps only records of the running recbench version, ``stale=True`` only the
    others; ``None`` keeps both. A line that is not one whole record (the torn line of a writer
    killed mid-write) is logged as a warning with its line number and added to ``damaged`` when
    given; the whole records it still holds are read.
    """
    records, bad = scan_store(root)
    _warn(bad)
    if damaged is not None:
        damaged.extend(bad)
    models = {model} if isinstance(model, str) else set(model) if model is not None else None
    version = code_version()
    out = []
    for rec in records:
        if models is not None and rec.get("model") not in models:
            continue
        if dataset is not None and rec.get("dataset") != dataset:
            continue
        if status is not None and rec.get("status") != status:
            continue
        if run_key is not None and rec.get("run_key") != run_key:
            continue
        if stale is not None and is_stale(rec, version) != stale:
            continue
        out.append(rec)
    return out


# ---------------------------------------------------------------------------- repair


def _backup_path(path: Path) -> Path:
    bak = path.with_name(path.name + ".bak")
    n = 1
    while bak.exists():  # never overwrite an earlier backup: it may hold the only copy of a line
        n += 1
        bak = path.with_name(f"{path.name}.bak{n}")
    return bak


@dataclass
class Repair:
    """What ``repair_store`` did."""

    path: Path
    damaged: list[DamagedLine]
    kept: int = 0  # lines kept as they were
    recovered: int = 0  # whole records split out of damaged lines
    dropped: list[DamagedLine] = field(default_factory=list)  # lines with a torn fragment
    backup: Path | None = None  # the store as it was, when anything changed


def repair_store(root: str | os.PathLike) -> Repair:
    """Rewrite the store with every whole record on its own line and the fragments of torn writes
    left out. The new store is written to a temporary file, synced and renamed over the old one,
    under the store's lock; the old file is kept as ``results.jsonl.bak`` (``.bak2``... when
    that exists). A store without damaged lines is not touched. A store that is a symlink (one
    store shared by several outputs roots) is repaired where it points, and stays a link."""
    path = store_path(root).resolve()
    if not path.exists():
        raise StoreError(f"there is no results store at {path}")
    try:
        with _locked(path, os.O_RDWR, fcntl.LOCK_EX) as fd:
            with os.fdopen(os.dup(fd), "rb") as fh:
                lines = fh.read().splitlines(keepends=True)
            result = Repair(path, [])
            out: list[bytes] = []
            for lineno, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                if _parse_line(raw) is not None:
                    out.append(raw if raw.endswith(b"\n") else raw + b"\n")
                    result.kept += 1
                    continue
                found, fragment = _split_line(raw.decode("utf-8", errors="replace"))
                d = DamagedLine(path, lineno, _shorten(raw), found)
                result.damaged.append(d)
                if fragment:  # a torn write's text beside (or instead of) whole records
                    result.dropped.append(d)
                for rec in found:
                    out.append(_encode(rec))
                result.recovered += len(found)
            if not result.damaged:
                return result
            tmp = path.with_name(f".{path.name}.{os.getpid()}.repair")
            try:
                with open(tmp, "wb") as fh:
                    _write_all(fh.fileno(), b"".join(out))
                    os.fsync(fh.fileno())
                os.chmod(tmp, os.fstat(fd).st_mode & 0o777)
                backup = _backup_path(path)
                try:
                    os.link(path, backup)  # the old file itself: no copy to fail half way
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, backup)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(path)
            result.backup = backup
            return result
    except OSError as exc:
        raise StoreError(
            f"could not repair the results store {path}: {exc.strerror or exc}; it is unchanged"
        ) from exc


def _ident(record: dict[str, Any]) -> tuple[Any, Any, Any]:
    """What makes two records one run's: its run key, run directory and finish time."""
    return record.get("run_key"), record.get("run_dir"), record.get("finished_at")


def _run_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text())
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path} is not JSON ({exc}); give a run's metrics.json") from exc
    if not isinstance(rec, dict) or "status" not in rec or "model" not in rec:
        raise StoreError(f"{path} is not a run record (no status or model); give a metrics.json")
    return rec


def add_records(paths: list[str | os.PathLike], root: str | os.PathLike) -> list[tuple[Path, str]]:
    """Append the records in ``paths`` (each a run's ``metrics.json``) to the store, skipping any
    already there (same run key, run directory and finish time). Returns (path, what happened).

    Every file is read first, so one that is not a run record stops with nothing added. The
    store is then read and appended to under one exclusive lock: two ``results add`` of one run
    at the same time store it once."""
    todo = [(p, _run_record(p)) for p in map(Path, paths)]
    path = store_path(root)
    done: list[tuple[Path, str]] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, fcntl.LOCK_EX) as fd:
            with os.fdopen(os.dup(fd), "rb") as fh:
                have = {_ident(r) for r in _scan(path, fh.read().splitlines(keepends=True))[0]}
            for p, rec in todo:
                if _ident(rec) in have:
                    done.append((p, "already in the store"))
                    continue
                _append_at(fd, path, _encode(rec))
                have.add(_ident(rec))
                done.append((p, "added"))
    except OSError as exc:
        added = [str(p) for p, what in done if what == "added"]
        kept = f"added before that: {', '.join(added)}" if added else "nothing was added"
        raise StoreWriteError(
            f"could not add to the results store {path}: {exc.strerror or exc} (errno "
            f"{exc.errno}); {kept}. Free space or fix permissions, then run the same command "
            "again: records already in the store are skipped."
        ) from exc
    return done


# ---------------------------------------------------------------------------- records


def record_version(record: dict[str, Any]) -> str | None:
    return (record.get("versions") or {}).get("recbench")


def is_stale(record: dict[str, Any], version: str | None = None) -> bool:
    """True when ``record`` was written by another recbench version (or says none)."""
    return record_version(record) != (version or code_version())


def tested(record: dict[str, Any]) -> bool:
    """A finished run whose test stage ran: what ``compare`` reuses and reports (a run made
    with ``test=false`` has the same run key but no test metrics)."""
    return record.get("status") == FINISHED and bool(record.get("test"))


def moved_away(record: dict[str, Any]) -> str:
    """Why ``record``'s run folder no longer holds its files, or "" while it does (or cannot
    tell): a later run into the same folder (``overwrite=true``) moves an earlier run's files
    aside, and its ``metrics.json`` then belongs to the later run."""
    run_dir = record.get("run_dir")
    if not run_dir:
        return ""
    path = Path(str(run_dir)) / "metrics.json"
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""  # no metrics.json to compare with: the files' own checks apply
    same = all(held.get(k) == record.get(k) for k in ("run_key", "seed", "finished_at"))
    if same:
        return ""
    return (
        f"{run_dir} now holds another run ({held.get('model')}, seed {held.get('seed')}, "
        f"finished {held.get('finished_at')}); this run's files were moved aside"
    )


def latest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last written of ``records`` (the store is append-only, so file order is time order)."""
    return records[-1] if records else None


# config keys that change where a run writes, what it prints or how fast it runs, never its
# numbers: a compare with another `threads` (or none) reuses the runs it finds
_VOLATILE = ("paths", "logger", "hydra", "record", "test", "overwrite", "threads")
_VOLATILE_TRAINER = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")


def run_key(cfg, data_key: str) -> str:
    """Hash of what determines a run's numbers: the config without paths, loggers, display
    options and thread count (unresolved, so output folders never enter it), the prepared
    data's cache key, and the code version."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=False)
    for k in _VOLATILE:
        c.pop(k, None)
    trainer = c.get("trainer") or {}
    for k in _VOLATILE_TRAINER:
        trainer.pop(k, None)
    # last.ckpt is what a killed run resumes from, never part of its numbers
    ((c.get("callbacks") or {}).get("model_checkpoint") or {}).pop("save_last", None)
    material = json.dumps(
        {"cfg": c, "data": data_key, "code": code_version()}, sort_keys=True, default=str
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


__all__ = [
    "FAILED",
    "FINISHED",
    "LOCK_TIMEOUT_S",
    "STORE_NAME",
    "DamagedLine",
    "Repair",
    "StoreError",
    "StoreLockError",
    "StoreWriteError",
    "add_records",
    "append_record",
    "code_version",
    "is_stale",
    "latest",
    "moved_away",
    "read_records",
    "record_version",
    "repair_store",
    "run_key",
    "save_run_record",
    "scan_store",
    "store_path",
    "tested",
    "write_json",
]
