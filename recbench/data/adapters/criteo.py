"""Criteo display-ads logs: the Kaggle challenge's ``train.txt`` and the day files of the 1TB set.

One impression per line, tab-separated: ``label``, 13 integer counts ``I1..I13`` and 26 hashed
categorical values ``C1..C26`` (8 hex digits); an empty field is a missing value. ``.gz`` files
are read through gzip. The files can be far larger than memory, so this adapter never loads them
whole: ``chunks()`` yields polars frames of a bounded number of bytes, in file order, with the
line number of their first row; ``recbench.data.shards`` prepares them in two streamed passes.

Categorical values are parsed from hex to integers (cheaper to count and encode than strings);
a missing value becomes ``MISSING`` (-1), a value of its own in the vocabulary.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from recbench.data.adapters.base import DATA_ENV, RESTORE, malformed
from recbench.errors import ConfigError, DataNotFoundError, MalformedDataError

N_DENSE, N_SPARSE = 13, 26
DENSE = tuple(f"I{i}" for i in range(1, N_DENSE + 1))
SPARSE = tuple(f"C{i}" for i in range(1, N_SPARSE + 1))
COLUMNS = ("label", *DENSE, *SPARSE)
MISSING = -1  # a missing categorical value (hex values are >= 0)
# the Kaggle set's train.txt, then day files of the 1TB set, then any text file
AUTO_PATTERNS = (("train.txt", "train.txt.gz"), ("day_*",), ("*.txt", "*.tsv", "*.txt.gz"))


class Criteo:
    """The Criteo files in ``root``.

    ``files``: a file name or glob relative to the folder (``day_0.gz``, ``day_[0-6]*``); null
    picks ``train.txt`` where present, else the ``day_*`` files, else every ``.txt``/``.tsv``
    file. Without ``root`` the folder is ``$RECBENCH_DATA_DIR/<subdir>``. ``oracle``: a float32
    ``.npy`` of every row's true click probability (``scripts/make_criteo.py`` writes one beside
    its TSV); ``auto`` uses ``<file stem>.oracle.npy`` when it exists next to a single file.
    """

    def __init__(
        self,
        root: str | None = None,
        files: str | None = None,
        subdir: str = "criteo",
        chunk_mb: float = 16,
        oracle: str | None = "auto",
        name: str = "criteo",
    ) -> None:
        self.root = root
        self.pattern = files
        self.subdir = subdir
        self.chunk_bytes = max(1 << 16, int(float(chunk_mb) * (1 << 20)))
        self.oracle_option = oracle
        self.name = name

    # ------------------------------------------------------------------ locating the files

    def folder(self) -> Path:
        if self.root:
            folder = Path(self.root).expanduser()
            if not folder.is_dir():
                raise DataNotFoundError(
                    f"dataset {self.name}: dataset.root={folder} is not a folder. Point "
                    "dataset.root at the folder holding train.txt or the day_* files."
                )
            return folder
        if os.environ.get(DATA_ENV):
            folder = Path(os.environ[DATA_ENV]).expanduser() / self.subdir
            if folder.is_dir():
                return folder
        raise DataNotFoundError(
            f"dataset {self.name}: no data folder. Pass dataset.root=<folder holding train.txt "
            f"or day_*>, or set {DATA_ENV} to the folder holding '{self.subdir}/'. The data "
            "cannot be downloaded automatically (Criteo's terms); scripts/make_criteo.py writes "
            "a synthetic file of the same layout."
        )

    def files(self) -> tuple[Path, ...]:
        """The raw files in reading order (sorted names; their sha256 enters the cache key)."""
        folder = self.folder()
        groups = ((self.pattern,),) if self.pattern else AUTO_PATTERNS
        for patterns in groups:
            found = sorted(
                {Path(p) for pat in patterns for p in glob.glob(str(folder / pat))},
                key=_natural,
            )
            found = [p for p in found if p.is_file() and not p.name.endswith(".oracle.npy")]
            if found:
                return tuple(found)
        what = f"dataset.adapter.files={self.pattern!r}" if self.pattern else "train.txt, day_*"
        raise DataNotFoundError(
            f"dataset {self.name}: {folder} holds no file matching {what} (nor .txt/.tsv). "
            "Point dataset.root at the Criteo folder, name the file or glob with "
            "dataset.adapter.files=<name>, or write a synthetic one with scripts/make_criteo.py."
        )

    def oracle_file(self) -> Path | None:
        opt = self.oracle_option
        if not opt:
            return None
        if opt != "auto":
            path = Path(opt).expanduser()
            path = path if path.is_absolute() else self.folder() / path
            if not path.exists():
                raise DataNotFoundError(
                    f"dataset {self.name}: dataset.adapter.oracle={opt} does not exist "
                    f"({path}). Set it to the .npy of true probabilities, or to null."
                )
            return path
        files = self.files()
        if len(files) != 1:
            return None
        stem = files[0].name.split(".")[0]
        path = files[0].with_name(f"{stem}.oracle.npy")
        return path if path.exists() else None

    # ------------------------------------------------------------------ reading

    def chunks(self) -> Iterator[tuple[Path, int, pl.DataFrame]]:
        """``(file, first line number, frame)`` for every chunk of every file, in order. The frame
        has ``COLUMNS``: label Int8, I* Int64 (null: missing), C* Int64 (``MISSING``: missing)."""
        for path in self.files():
            any_rows = False
            line = 1
            for buf in _byte_chunks(path, self.chunk_bytes):
                frame = parse_chunk(path, line, buf)
                any_rows = any_rows or frame.height > 0
                line += frame.height
                yield path, line - frame.height, frame
            if not any_rows:
                raise malformed(path, 1, "the file holds no rows", RESTORE)


def _natural(path: Path) -> tuple:
    """day_2 before day_10."""
    digits = "".join(c for c in path.name if c.isdigit())
    return (path.name.rstrip("0123456789.gz"), int(digits) if digits else -1, path.name)


def _byte_chunks(path: Path, size: int) -> Iterator[bytes]:
    """Whole lines, about ``size`` bytes at a time (a last line without newline included)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        rest = b""
        while True:
            block = fh.read(size)
            if not block:
                break
            block = rest + block
            cut = block.rfind(b"\n")
            if cut < 0:
                rest = block
                continue
            rest = block[cut + 1 :]
            yield block[: cut + 1]
        if rest.strip():
            yield rest + b"\n"


_SCHEMA = {"label": pl.Int8, **{c: pl.Int64 for c in DENSE}, **{c: pl.String for c in SPARSE}}


def parse_chunk(path: Path, first_line: int, buf: bytes) -> pl.DataFrame:
    """The rows of ``buf`` (whole lines of ``path`` starting at ``first_line``); a line with the
    wrong number of fields, a non-integer count, a label other than 0/1 or a categorical value
    that is not hex raises ``MalformedDataError`` naming the file and line."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    n_lines = int((raw == 10).sum())
    if int((raw == 9).sum()) != n_lines * (len(COLUMNS) - 1) or b"\n\n" in buf:
        _raise_first_bad_line(path, first_line, buf)
    try:
        frame = pl.read_csv(
            io.BytesIO(buf),
            separator="\t",
            has_header=False,
            new_columns=list(COLUMNS),
            schema=_SCHEMA,
            quote_char=None,
        )
    except pl.exceptions.PolarsError:
        _raise_first_bad_line(path, first_line, buf)
        raise  # pragma: no cover - the scan above always finds the line
    parsed = frame.select(
        pl.col("label"),
        *[pl.col(c) for c in DENSE],
        *[pl.col(c).str.to_integer(base=16, strict=False).fill_null(MISSING) for c in SPARSE],
    )
    bad = ~pl.col("label").is_in([0, 1]) | pl.col("label").is_null()
    for c in SPARSE:  # a non-empty value that did not parse as hex
        bad = bad | (pl.col(c).is_not_null() & (pl.col(c).str.len_bytes() > 0)).and_(
            pl.col(c).str.to_integer(base=16, strict=False).is_null()
        )
    flags = frame.select(bad.alias("bad"))["bad"]
    if flags.any():
        i = int(flags.arg_true()[0])
        _raise_first_bad_line(path, first_line, buf, start=i)
    return parsed


def _raise_first_bad_line(path: Path, first_line: int, buf: bytes, start: int = 0) -> None:
    lines = buf.split(b"\n")
    for i, text in enumerate(lines[start:-1], start):
        problem = _line_problem(text)
        if problem:
            raise malformed(path, first_line + i, problem)
    raise MalformedDataError(f"{path}: unreadable rows after line {first_line}.")


def _line_problem(text: bytes) -> str | None:
    fields = [f.decode("utf-8", "replace") for f in text.rstrip(b"\r").split(b"\t")]
    if len(fields) != len(COLUMNS):
        return (
            f"{len(fields)} tab-separated fields, the Criteo layout has {len(COLUMNS)} (label, "
            f"I1..I{N_DENSE}, C1..C{N_SPARSE}; the Kaggle test.txt has no label column)"
        )
    if fields[0] not in ("0", "1"):
        return f"label {fields[0][:20]!r} is not 0 or 1"
    for name, value in zip(DENSE, fields[1 : 1 + N_DENSE], strict=True):
        if value and not value.lstrip("-").isdigit():
            return f"{name}={value[:20]!r} is not an integer"
    for name, value in zip(SPARSE, fields[1 + N_DENSE :], strict=True):
        try:
            value and int(value, 16)
        except ValueError:
            return f"{name}={value[:20]!r} is not a hexadecimal hash"
    return None


def check_option(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return str(value)
