"""MovieLens in its official GroupLens layouts: 100K (``u.data``), 1M (``ratings.dat``) and the
CSV layout with headers shared by 20M, 25M, latest and latest-small (``ratings.csv``)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import polars as pl

from recbench.data.adapters.base import (
    RESTORE,
    Download,
    RawData,
    bad_encoding,
    decode,
    empty_file,
    find_root,
    malformed,
    read_text,
)

GENRES_100K = 19
SEPARATORS = {"\t": "tab", "|": "'|'", "::": "'::'", ",": "comma"}


def _read_table(
    path: Path, sep: str, names: list[str], ints: tuple[str, ...], encoding: str = "utf8"
) -> pl.DataFrame:
    """Read a header-less delimited file; on any malformed line, name the file and line."""
    lines = read_text(path, encoding).splitlines()
    problem = None
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != len(names):
            problem = (
                i,
                f"expected {len(names)} {SEPARATORS.get(sep, repr(sep))}-separated fields "
                f"({', '.join(names)}), found {len(parts)}",
            )
            break
        rows.append(parts)
    if problem:
        raise malformed(path, *problem)
    frame = pl.DataFrame(rows, schema=names, orient="row")
    for c in ints:
        bad = frame.with_row_index("_i").filter(
            pl.col(c).str.strip_chars().cast(pl.Int64, strict=False).is_null()
        )
        if bad.height:
            i = int(bad["_i"][0])
            value = bad[c][0]
            problem = "is empty" if not value.strip() else f"is not an integer: {value!r}"
            raise malformed(path, _line_of(lines, i), f"field {c!r} {problem}")
        frame = frame.with_columns(pl.col(c).str.strip_chars().cast(pl.Int64))
    return frame


def _line_of(lines: list[str], row: int) -> int:
    """1-based line number of the ``row``-th non-blank line."""
    seen = -1
    for i, line in enumerate(lines, start=1):
        if line.strip():
            seen += 1
            if seen == row:
                return i
    return len(lines)


def _label(ratings: pl.DataFrame, threshold: float) -> pl.DataFrame:
    return ratings.with_columns((pl.col("rating") >= threshold).cast(pl.Int64).alias("label"))


class MovieLens100K:
    """``u.data`` (user, item, rating, timestamp; tab), ``u.user`` and ``u.item`` (``|``, latin-1).

    Label: rating ≥ ``label_threshold``. Fields: user id, item id, age, gender, occupation, zip,
    genres (multi-value), timestamp. ``encoding`` reads every file in that encoding instead of
    the official ones (UTF-8, ``u.item`` latin-1).
    """

    name = "movielens-100k"
    subdir = "ml-100k"
    download = Download(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        checksum="md5:0e33842e24a9c977be4e0107933c0723",
        folder="ml-100k",
    )

    def __init__(
        self, root: str | None = None, label_threshold: float = 4.0, encoding: str | None = None
    ) -> None:
        self.root = root
        self.label_threshold = label_threshold
        self.encoding = encoding

    def files(self) -> tuple[Path, ...]:
        root = find_root(
            self.name, self.root, self.subdir, ("u.data", "u.user", "u.item"), self.download
        )
        return (root / "u.data", root / "u.user", root / "u.item")

    def load(self) -> RawData:
        root = self.files()[0].parent
        ratings = _read_table(
            root / "u.data",
            "\t",
            ["user_id", "item_id", "rating", "timestamp"],
            ("user_id", "item_id", "rating", "timestamp"),
            encoding=self.encoding or "utf8",
        )
        users = _read_table(
            root / "u.user",
            "|",
            ["user_id", "age", "gender", "occupation", "zip"],
            ("user_id", "age"),
            encoding=self.encoding or "utf8",
        )
        item_cols = ["item_id", "title", "release", "video_release", "url"] + [
            f"g{i}" for i in range(GENRES_100K)
        ]
        items = _read_table(
            root / "u.item", "|", item_cols, ("item_id",), encoding=self.encoding or "latin-1"
        )
        flags = pl.concat_list(
            [pl.when(pl.col(f"g{i}") == "1").then(i) for i in range(GENRES_100K)]
        )
        items = items.select(
            "item_id", flags.list.drop_nulls().cast(pl.List(pl.Int64)).alias("genres")
        )
        events = _label(ratings, self.label_threshold).join(
            users, on="user_id", how="left", maintain_order="left"
        )
        events = events.join(items, on="item_id", how="left", maintain_order="left")
        return RawData(
            events=events,
            sparse=("age", "gender", "occupation", "zip"),
            multi=("genres",),
            item_attributes=("genres",),
            files=(root / "u.data", root / "u.user", root / "u.item"),
            fingerprint={"label_threshold": self.label_threshold},
        )


class MovieLens1M:
    """``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``-separated, latin-1 unless
    ``encoding`` says otherwise)."""

    name = "movielens-1m"
    subdir = "ml-1m"
    download = Download(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        checksum="md5:c4d9eecfca2ab87c1945afe126590906",
        folder="ml-1m",
    )

    def __init__(
        self, root: str | None = None, label_threshold: float = 4.0, encoding: str | None = None
    ) -> None:
        self.root = root
        self.label_threshold = label_threshold
        self.encoding = encoding or "latin-1"

    def files(self) -> tuple[Path, ...]:
        root = find_root(
            self.name,
            self.root,
            self.subdir,
            ("ratings.dat", "users.dat", "movies.dat"),
            self.download,
        )
        return (root / "ratings.dat", root / "users.dat", root / "movies.dat")

    def load(self) -> RawData:
        root = self.files()[0].parent
        ratings = _read_table(
            root / "ratings.dat",
            "::",
            ["user_id", "item_id", "rating", "timestamp"],
            ("user_id", "item_id", "rating", "timestamp"),
            encoding=self.encoding,
        )
        users = _read_table(
            root / "users.dat",
            "::",
            ["user_id", "gender", "age", "occupation", "zip"],
            ("user_id", "age"),
            encoding=self.encoding,
        )
        movies = _read_table(
            root / "movies.dat",
            "::",
            ["item_id", "title", "genres"],
            ("item_id",),
            encoding=self.encoding,
        )
        movies = movies.select("item_id", pl.col("genres").str.split("|").alias("genres"))
        events = _label(ratings, self.label_threshold).join(
            users, on="user_id", how="left", maintain_order="left"
        )
        events = events.join(movies, on="item_id", how="left", maintain_order="left")
        return RawData(
            events=events,
            sparse=("age", "gender", "occupation", "zip"),
            multi=("genres",),
            item_attributes=("genres",),
            files=(root / "ratings.dat", root / "users.dat", root / "movies.dat"),
            fingerprint={"label_threshold": self.label_threshold},
        )


class MovieLensCSV:
    """The CSV layout with headers (20M, 25M, latest, latest-small): ``ratings.csv``
    (userId,movieId,rating,timestamp) and ``movies.csv`` (movieId,title,genres), UTF-8 unless
    ``encoding`` says otherwise."""

    name = "movielens-latest"

    def __init__(
        self,
        root: str | None = None,
        subdir: str = "ml-latest-small",
        label_threshold: float = 4.0,
        url: str | None = None,
        checksum: str | None = None,
        encoding: str | None = None,
    ) -> None:
        self.root = root
        self.encoding = encoding or "utf8"
        self.subdir = subdir
        self.label_threshold = label_threshold
        self.download = Download(url, checksum, subdir) if url and checksum else None

    def files(self) -> tuple[Path, ...]:
        root = find_root(
            self.name, self.root, self.subdir, ("ratings.csv", "movies.csv"), self.download
        )
        return (root / "ratings.csv", root / "movies.csv")

    def load(self) -> RawData:
        root = self.files()[0].parent
        ratings = _read_csv(
            root / "ratings.csv",
            {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64},
            self.encoding,
        )
        movies = _read_csv(
            root / "movies.csv",
            {"movieId": pl.Int64, "title": pl.Utf8, "genres": pl.Utf8},
            self.encoding,
        )
        ratings = ratings.rename({"userId": "user_id", "movieId": "item_id"})
        movies = movies.select(
            pl.col("movieId").alias("item_id"),
            pl.col("genres").str.split("|").list.filter(pl.element() != "(no genres listed)"),
        )
        events = _label(ratings, self.label_threshold).join(
            movies, on="item_id", how="left", maintain_order="left"
        )
        return RawData(
            events=events,
            multi=("genres",),
            item_attributes=("genres",),
            files=(root / "ratings.csv", root / "movies.csv"),
            fingerprint={"label_threshold": self.label_threshold},
        )


def _read_csv(path: Path, schema: dict[str, pl.DataType], encoding: str) -> pl.DataFrame:
    """A CSV file with exactly the header ``schema``; every failure names the file and line."""
    if path.stat().st_size == 0:
        raise empty_file(path)
    with open(path, "rb") as fh:
        first = fh.readline()
    header = decode(path, first, encoding).lstrip("\ufeff").strip().split(",")
    if header != list(schema):
        raise _bad_header(path, header, list(schema))
    utf8 = encoding.replace("-", "").lower() in ("utf8", "utf_8")
    source = path if utf8 else io.BytesIO(decode(path, path.read_bytes(), encoding).encode())
    try:
        frame = pl.read_csv(source, schema_overrides=schema, infer_schema_length=0)
    except pl.exceptions.PolarsError as exc:
        raise _find_bad_line(path, schema, encoding) or malformed(
            path, 1, f"cannot parse the file ({str(exc).splitlines()[0]})"
        ) from None
    frame = frame.filter(~pl.all_horizontal(pl.all().is_null()))  # blank lines
    if frame.height == 0:
        raise malformed(path, 2, "the file holds its header but no rows", RESTORE)
    numbers = [c for c, t in schema.items() if t != pl.Utf8]
    bad = frame.select(pl.any_horizontal(pl.col(numbers).is_null()).any()).item()
    floats = [c for c, t in schema.items() if t == pl.Float64]
    if floats:
        bad |= frame.select(pl.any_horizontal(~pl.col(floats).is_finite()).any()).item()
    if bad:  # a short line, an empty field, or NaN/inf: find the first such line
        raise _find_bad_line(path, schema, encoding) or malformed(
            path, 2, f"some of {numbers} are empty or not finite"
        )
    return frame


def _bad_header(path: Path, header: list[str], want: list[str]):
    missing = [c for c in want if c not in header]
    extra = [c for c in header if c not in want]
    detail = "; ".join(
        [
            *([f"missing column(s) {', '.join(missing)}"] if missing else []),
            *([f"unexpected column(s) {', '.join(extra)}"] if extra else []),
            *([] if missing or extra else ["the columns are in another order"]),
        ]
    )
    return malformed(
        path,
        1,
        f"expected the header {','.join(want)}, found {','.join(header) or 'nothing'} ({detail})",
        "MovieLens CSV files (20M, 25M, latest) start with that header; restore the file from "
        "the dataset's archive, or point dataset.root at the folder of the CSV layout.",
    )


def _find_bad_line(path: Path, schema: dict[str, pl.DataType], encoding: str):
    """The error for the first line that breaks ``schema`` (None if every line is fine).

    Slow (Python's csv module), so only called once polars has reported a problem."""
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        return bad_encoding(path, data, exc.start, encoding)
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader, None)  # the header, already checked
    names = list(schema)
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) != len(names):
            return malformed(
                path,
                line,
                f"expected {len(names)} comma-separated fields ({', '.join(names)}), "
                f"found {len(row)}",
            )
        for (col, dtype), value in zip(schema.items(), row, strict=True):
            if dtype == pl.Utf8:
                continue
            if not value.strip():
                return malformed(path, line, f"field {col!r} is empty")
            try:
                number = int(value) if dtype == pl.Int64 else float(value)
            except ValueError:
                kind = "an integer" if dtype == pl.Int64 else "a number"
                return malformed(path, line, f"field {col!r} is not {kind}: {value!r}")
            if not math.isfinite(number):
                return malformed(path, line, f"field {col!r} is not a finite number: {value!r}")
    return None


__all__ = ["MovieLens100K", "MovieLens1M", "MovieLensCSV"]
