"""The sha256 of a raw data file, remembered between runs.

Every run keys its prepared-data cache on the raw files' sha256; hashing them again on each run
costs seconds on the larger datasets (hundreds of MB) and is paid by every run of a compare. The
digest is kept in ``<cache root>/file_hashes.json`` under the file's resolved path, with its
size, modification and status-change times (ns), inode and device: any write to the file changes
its ctime, which no tool can set back, so a file whose stat still matches is the file that was
hashed. A missing, unreadable or concurrently replaced memo only costs a fresh hash.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from recbench.data.adapters.base import cache_root, sha256_file

MEMO_NAME = "file_hashes.json"
MAX_ENTRIES = 1000  # keep the memo small: the oldest entries go first


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read(memo: Path) -> dict[str, dict]:
    try:
        data = json.loads(memo.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_sha256(path: Path, memo_dir: Path | None = None) -> str:
    """``sha256_file(path)``, read from the memo when the file's stat is unchanged since it
    was hashed, else computed and remembered."""
    path = Path(path).resolve()
    stamp = _stamp(path.stat())
    memo = Path(memo_dir or cache_root()) / MEMO_NAME
    entries = _read(memo)
    entry = entries.get(str(path))
    if isinstance(entry, dict) and entry.get("stat") == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    digest = sha256_file(path)
    if _stamp(path.stat()) != stamp:  # written to while being hashed: do not remember it
        return digest
    entries.pop(str(path), None)
    entries[str(path)] = {"stat": stamp, "sha256": digest}
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    # written beside and renamed over the memo, so a concurrent run never reads half a file
    tmp = memo.with_name(f"{MEMO_NAME}.{os.getpid()}.tmp")
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, memo)
    except OSError:  # a read-only or full cache folder: the digest is still right
        with contextlib.suppress(OSError):
            tmp.unlink()
    return digest


def file_digests(files, digest: Callable[[Path], str] | None = None) -> dict[str, str]:
    """``digest`` of each raw file, under its name; where two files share a name (a glob over
    folders: ``day=*/part-0.parquet``), under its path from the folder that holds them all."""
    digest = digest or file_sha256
    paths = [Path(f) for f in files]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        base = Path(os.path.commonpath([p.resolve() for p in paths]))
        names = [p.resolve().relative_to(base).as_posix() for p in paths]
    return {n: digest(p) for n, p in zip(names, paths, strict=True)}


__all__ = ["file_digests", "file_sha256"]
