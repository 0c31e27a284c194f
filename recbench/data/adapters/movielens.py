"""MovieLens in its official GroupLens layouts: 100K (``u.data``), 1M (``ratings.dat``) and the
CSV layout with headers shared by 20M, 25M, latest and latest-small (``ratings.csv``)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recbench.data.adapters.base import Download, RawData, find_root, malformed

GENRES_100K = 19


def _read_table(
    path: Path, sep: str, names: list[str], ints: tuple[str, ...], encoding: str = "utf8"
) -> pl.DataFrame:
    """Read a header-less delimited file; on any malformed line, name the file and line."""
    text = path.read_bytes().decode(encoding)
    lines = text.splitlines()
    problem = None
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != len(names):
            problem = (i, f"expected {len(names)} '{sep}'-separated fields, found {len(parts)}")
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
            raise malformed(
                path, _line_of(lines, i), f"field {c!r} is not an integer: {bad[c][0]!r}"
            )
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
    genres (multi-value), timestamp.
    """

    name = "movielens-100k"
    subdir = "ml-100k"
    download = Download(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        checksum="md5:0e33842e24a9c977be4e0107933c0723",
        folder="ml-100k",
    )

    def __init__(self, root: str | None = None, label_threshold: float = 4.0) -> None:
        self.root = root
        self.label_threshold = label_threshold

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
        )
        users = _read_table(
            root / "u.user",
            "|",
            ["user_id", "age", "gender", "occupation", "zip"],
            ("user_id", "age"),
        )
        item_cols = ["item_id", "title", "release", "video_release", "url"] + [
            f"g{i}" for i in range(GENRES_100K)
        ]
        items = _read_table(root / "u.item", "|", item_cols, ("item_id",), encoding="latin-1")
        flags = pl.concat_list(
            [pl.when(pl.col(f"g{i}") == "1").then(i) for i in range(GENRES_100K)]
        )
        items = items.select(
            "item_id", flags.list.drop_nulls().cast(pl.List(pl.Int64)).alias("genres")
        )
        events = _label(ratings, self.label_threshold).join(users, on="user_id", how="left")
        events = events.join(items, on="item_id", how="left")
        return RawData(
            events=events,
            sparse=("age", "gender", "occupation", "zip"),
            multi=("genres",),
            item_attributes=("genres",),
            files=(root / "u.data", root / "u.user", root / "u.item"),
            fingerprint={"label_threshold": self.label_threshold},
        )


class MovieLens1M:
    """``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``-separated, latin-1)."""

    name = "movielens-1m"
    subdir = "ml-1m"
    download = Download(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        checksum="md5:c4d9eecfca2ab87c1945afe126590906",
        folder="ml-1m",
    )

    def __init__(self, root: str | None = None, label_threshold: float = 4.0) -> None:
        self.root = root
        self.label_threshold = label_threshold

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
            encoding="latin-1",
        )
        users = _read_table(
            root / "users.dat",
            "::",
            ["user_id", "gender", "age", "occupation", "zip"],
            ("user_id", "age"),
            encoding="latin-1",
        )
        movies = _read_table(
            root / "movies.dat",
            "::",
            ["item_id", "title", "genres"],
            ("item_id",),
            encoding="latin-1",
        )
        movies = movies.select("item_id", pl.col("genres").str.split("|").alias("genres"))
        events = _label(ratings, self.label_threshold).join(users, on="user_id", how="left")
        events = events.join(movies, on="item_id", how="left")
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
    (userId,movieId,rating,timestamp) and ``movies.csv`` (movieId,title,genres)."""

    name = "movielens-latest"

    def __init__(
        self,
        root: str | None = None,
        subdir: str = "ml-latest-small",
        label_threshold: float = 4.0,
        url: str | None = None,
        checksum: str | None = None,
    ) -> None:
        self.root = root
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
        )
        movies = _read_csv(
            root / "movies.csv", {"movieId": pl.Int64, "title": pl.Utf8, "genres": pl.Utf8}
        )
        ratings = ratings.rename({"userId": "user_id", "movieId": "item_id"})
        movies = movies.select(
            pl.col("movieId").alias("item_id"),
            pl.col("genres").str.split("|").list.filter(pl.element() != "(no genres listed)"),
        )
        events = _label(ratings, self.label_threshold).join(movies, on="item_id", how="left")
        return RawData(
            events=events,
            multi=("genres",),
            item_attributes=("genres",),
            files=(root / "ratings.csv", root / "movies.csv"),
            fingerprint={"label_threshold": self.label_threshold},
        )


def _read_csv(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    header = path.open(encoding="utf8").readline().strip().split(",")
    if header != list(schema):
        raise malformed(path, 1, f"expected header {','.join(schema)}, found {','.join(header)}")
    try:
        return pl.read_csv(path, schema_overrides=schema, infer_schema_length=0)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError) as exc:
        frame = pl.read_csv(path, infer_schema_length=0, truncate_ragged_lines=False)
        for col, dtype in schema.items():
            if dtype == pl.Utf8:
                continue
            bad = frame.with_row_index("_i").filter(
                pl.col(col).cast(dtype, strict=False).is_null() & pl.col(col).is_not_null()
            )
            if bad.height:
                raise malformed(
                    path, int(bad["_i"][0]) + 2, f"field {col!r} is not a number: {bad[col][0]!r}"
                ) from exc
        raise malformed(path, 0, str(exc).splitlines()[0]) from exc


__all__ = ["MovieLens100K", "MovieLens1M", "MovieLensCSV"]
