"""What every dataset adapter returns, and how adapters find their files.

An adapter parses one source format into ``RawData``: one row per event with canonical columns
``user_id``, ``item_id``, ``timestamp`` (Int64; for sources without time, the position in the
user's sequence), ``label`` (Int64 0/1), optional ``rating``, and its feature columns. The feature
pipeline takes it from there (splits, vocabularies, histories, negatives, tensors).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recbench.errors import ConfigError, DataNotFoundError, MalformedDataError

DATA_ENV = "RECBENCH_DATA_DIR"


def cache_root() -> Path:
    """``$RECBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/recbench``, else ``~/.cache/recbench``."""
    if os.environ.get("RECBENCH_CACHE_DIR"):
        return Path(os.environ["RECBENCH_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recbench"


@dataclass
class RawData:
    events: pl.DataFrame
    sparse: tuple[str, ...] = ()  # categorical columns besides user_id and item_id
    multi: tuple[str, ...] = ()  # List columns
    dense: tuple[str, ...] = ()  # numeric columns
    item_attributes: tuple[str, ...] = ()  # sparse/multi columns that describe the item
    files: tuple[Path, ...] = ()  # raw files whose sha256 enters the cache key
    fingerprint: dict = field(default_factory=dict)  # other inputs that change the data
    implicit: bool = False  # every event is a positive; the pipeline samples negatives
    # columns of the event's context (time of day, device, ...): a sampled negative keeps its
    # positive's context ("keep", the NFM paper's protocol) or draws another event's ("resample")
    context: tuple[str, ...] = ()
    negative_context: str = "keep"

    def __post_init__(self) -> None:
        need = {"user_id", "item_id", "timestamp", "label"}
        missing = need - set(self.events.columns)
        if missing:
            raise ValueError(f"adapter output lacks columns {sorted(missing)}")
        declared = [*self.sparse, *self.multi, *self.dense]
        absent = [c for c in declared if c not in self.events.columns]
        if absent:
            raise ValueError(f"declared feature columns {absent} are not in the events frame")
        stray = [c for c in self.item_attributes if c not in (*self.sparse, *self.multi)]
        if stray:
            raise ValueError(f"item attributes {stray} must be sparse or multi columns")


@dataclass(frozen=True)
class Download:
    """An official archive: where to fetch it, its checksum as ``"<algorithm>:<hex>"`` (sha256
    where the publisher gives one; GroupLens publishes md5), and the folder it unpacks to."""

    url: str
    checksum: str
    folder: str  # the folder inside the archive that holds the files


def require_events(adapter: Any, dataset: str, task: str) -> None:
    """A task that reads users' events (rating, top-K, next-item) needs an adapter that loads
    them; a streamed CTR log of anonymous feature rows (Criteo) has no user or item ids."""
    if not hasattr(adapter, "load"):
        raise ConfigError(
            f"dataset {dataset} is a CTR log of feature rows streamed in chunks, with no user or "
            f"item ids, so task={task} has nothing to rank or rate: train it with task=ctr, or "
            "pick a dataset of users and items (movielens-100k, amazon-beauty, or a table of "
            "your own, dataset=table)"
        )


def sha256_file(path: Path, chunk: int = 1 << 20, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_root(
    name: str,
    root: str | os.PathLike | None,
    subdir: str,
    required: tuple[str, ...],
    download: Download | None = None,
) -> Path:
    """The folder holding ``required`` files: ``root``, then ``$RECBENCH_DATA_DIR/<subdir>``, then
    the user cache (downloading there when a URL is known and the network answers)."""
    candidates: list[Path] = []
    if root:
        explicit = Path(root).expanduser()
        if not all((explicit / f).exists() for f in required):
            raise DataNotFoundError(
                f"dataset {name}: dataset.root={explicit} does not hold {', '.join(required)}. "
                f"Point dataset.root at the folder with these files."
            )
        return explicit
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]).expanduser() / subdir)
    cached = cache_root() / "raw" / subdir
    candidates.append(cached)
    for c in candidates:
        if all((c / f).exists() for f in required):
            return c
    if download is not None and os.environ.get("RECBENCH_OFFLINE") != "1":
        try:
            _download(download, cached)
            if all((cached / f).exists() for f in required):
                return cached
        except OSError as exc:  # offline, refused, or a bad archive
            reason = f" (download failed: {exc})"
        else:
            reason = " (the downloaded archive lacked them)"
    else:
        reason = ""
    where = " or ".join(str(c) for c in candidates)
    raise DataNotFoundError(
        f"dataset {name}: cannot find {', '.join(required)}{reason}. Put the files in {where}, "
        f"set {DATA_ENV} to the folder holding '{subdir}/', or pass dataset.root=<folder>."
    )


def _download(spec: Download, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / (Path(spec.url).name + ".part")
    with urllib.request.urlopen(spec.url, timeout=60) as resp, open(archive, "wb") as out:
        while block := resp.read(1 << 20):
            out.write(block)
    algorithm, expected = spec.checksum.split(":", 1)
    got = sha256_file(archive, algorithm=algorithm)
    if got != expected:
        archive.unlink(missing_ok=True)
        raise OSError(f"{algorithm} mismatch for {spec.url}: expected {expected}, got {got}")
    with zipfile.ZipFile(archive) as zf:
        tmp = dest.parent / (dest.name + ".tmp")
        zf.extractall(tmp)
    (tmp / spec.folder).rename(dest)
    archive.unlink(missing_ok=True)


def malformed(
    path: Path, line: int, problem: str, fix: str = "Fix or remove that line."
) -> MalformedDataError:
    return MalformedDataError(f"{path}:{line}: {problem}. {fix}")


RESTORE = (
    "Restore the file from the dataset's archive (an interrupted download or copy leaves it "
    "short), or point dataset.root at a complete copy."
)


def empty_file(path: Path) -> MalformedDataError:
    size = path.stat().st_size
    what = "is empty (0 bytes)" if size == 0 else f"holds only blank lines ({size} bytes)"
    return malformed(path, 1, f"the file {what}", RESTORE)


def decode(path: Path, data: bytes, encoding: str) -> str:
    """``data`` (the bytes of ``path``) decoded; a byte the encoding rejects raises
    ``MalformedDataError`` with its line, column and byte offset, and how to read the file."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise bad_encoding(path, data, exc.start, encoding) from None
    except LookupError:
        raise MalformedDataError(
            f"{path}: unknown encoding {encoding!r}. Set dataset.adapter.encoding to a Python "
            "codec name such as utf-8 or latin-1."
        ) from None


def bad_encoding(path: Path, data: bytes, offset: int, encoding: str) -> MalformedDataError:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    other = "latin-1" if encoding.replace("-", "").lower() != "latin1" else "utf-8"
    return malformed(
        path,
        line,
        f"byte 0x{data[offset]:02x} at byte offset {offset} (column {column}) is not valid "
        f"{encoding}",
        f"Convert the file to {encoding} (e.g. `iconv -f {other} -t {encoding}`), or read it "
        f"in its own encoding with ++dataset.adapter.encoding={other}.",
    )


def read_text(path: Path, encoding: str) -> str:
    """The whole text of ``path``; empty files and undecodable bytes raise with file and line."""
    data = path.read_bytes()
    if not data.strip():
        raise empty_file(path)
    return decode(path, data, encoding)
