"""A table a user brings, declared in YAML alone (``dataset=table``, or a copy of
``configs/dataset/table.yaml`` under the user's own config folder).

One or more files (a path or a glob; CSV, TSV or Parquet, ``.gz`` accepted for text) hold one
event per row. The YAML names each column's role: ``user`` and ``item`` (required), ``time``
(optional: without it the file order is the time order), the label (a binary ``label`` column,
or a ``rating`` column with ``rating_threshold`` — without it, ratings and no click label, for
the rating and ranking tasks — or neither: every row is a positive and the pipeline samples
negatives), and the feature columns: ``sparse`` (categorical), ``dense``
(numeric) and ``multi`` (a column of values joined by a separator). Side tables of user or item
attributes are joined on their key. Everything downstream (splits, vocabularies, histories,
negatives, the cache key, ``recbench data info``) works as for the built-in datasets.
"""

from __future__ import annotations

import glob
import gzip
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from recbench.data.adapters.base import RawData, decode, empty_file, malformed
from recbench.data.adapters.lines import (
    bad_separator,
    field_count_error,
    field_counts,
    without_blank_lines,
)
from recbench.errors import ConfigError, DataNotFoundError, MalformedDataError

SEPARATORS = {"csv": ",", "tsv": "\t"}
# suffixes of formats a table is not read from (others are read as delimited text)
OTHER_FORMATS = frozenset(
    {".json", ".jsonl", ".ndjson", ".xlsx", ".xls", ".avro", ".orc", ".feather", ".arrow"}
    | {".ipc", ".pkl", ".pickle", ".npy", ".npz", ".h5", ".hdf5", ".zip", ".bz2", ".xz", ".zst"}
)


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in ("csv", "tsv", "parquet"):
            raise ConfigError(f"dataset.adapter.format={fmt!r}: choose auto, csv, tsv or parquet")
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last in (".parquet", ".pq"):
        return "parquet"
    if last in (".tsv", ".tab"):
        return "tsv"
    if last in OTHER_FORMATS:
        raise ConfigError(
            f"{path}: dataset=table reads CSV, TSV and Parquet, not {last} files: convert it "
            "(polars or pandas write any of the three), or set dataset.adapter.format if the file "
            "is one of them under another suffix"
        )
    return "csv"  # .csv, .txt, .dat, no suffix: text with the given (or comma) separator


class TableSource:
    """One file or glob with its reading options; also used for side tables."""

    def __init__(
        self,
        path: str,
        root: str | None = None,
        format: str = "auto",
        separator: str | None = None,
        has_header: bool = True,
        encoding: str = "utf8",
        key: str = "dataset.adapter",
    ) -> None:
        self.pattern = path
        self.root = root
        self.format = format
        self.separator = separator
        self.has_header = bool(has_header)
        self.encoding = encoding
        self.key = key  # where its options are set, for messages
        self.heights: tuple[tuple[Path, int], ...] = ()  # each file read and its rows
        # columns read as text whatever they look like: ids and categories, whose "007" and "7"
        # are two values (read as numbers, both would be 7)
        self.text_columns: frozenset[str] = frozenset()

    def files(self) -> tuple[Path, ...]:
        if self.separator and len(str(self.separator).encode()) > 1:
            raise bad_separator(str(self.separator), self.key)
        if not self.pattern:
            raise ConfigError("dataset.adapter.path is empty: name the file (or glob) to read")
        base = Path(self.root).expanduser() if self.root else Path.cwd()
        pattern = Path(self.pattern).expanduser()
        full = pattern if pattern.is_absolute() else base / pattern
        found = sorted(Path(p) for p in glob.glob(str(full)))
        if found and all(p.is_dir() for p in found):
            raise ConfigError(
                f"dataset.adapter.path={self.pattern} is a folder ({found[0]}): give a file, or a "
                f"glob of the files in it, e.g. {Path(self.pattern) / '*.csv'}"
            )
        found = [p for p in found if not p.is_dir()]  # a glob may match folders beside files
        if not found:
            raise DataNotFoundError(
                f"dataset table: no file matches {full}. Set dataset.adapter.path to a file or "
                "glob (relative paths start at dataset.root, else the current folder)."
            )
        return tuple(found)

    def read(self) -> pl.DataFrame:
        files = self.files()
        frames = [self._read_one(p) for p in files]
        names = [f.columns for f in frames]
        if any(n != names[0] for n in names):
            raise MalformedDataError(
                f"the files of {self.pattern} have different columns: "
                + "; ".join(f"{p.name}: {n}" for p, n in zip(files, names, strict=True))
            )
        self.heights = tuple((p, f.height) for p, f in zip(files, frames, strict=True))
        if len(frames) == 1:
            return frames[0]
        # a column one file reads as numbers and another as text (a value that is not a number)
        # becomes text: each role's check then names the file and line of the bad value
        try:
            return pl.concat(frames, how="vertical_relaxed")
        except pl.exceptions.PolarsError as exc:
            raise MalformedDataError(
                f"the files of {self.pattern} cannot be read as one table ({exc}); read them one "
                "at a time to find the file whose values differ in kind"
            ) from None

    def locate(self, row: int) -> tuple[Path, int]:
        """The file and line of row ``row`` (0-based) of the frame ``read`` returned; blank
        lines and quoted values over several lines are counted."""
        path, header = self.heights[-1][0], int(self.has_header)
        for file, height in self.heights:
            if row < height:
                path = file
                break
            row -= height
        if _format_of(path, self.format) != "parquet":
            text = self._text(path)
            counts = field_counts(text, text.encode(), self._separator(path))
            lines = [] if counts is None else counts.filter(pl.col("fields") > 0)["line"]
            if row + header < len(lines):
                return path, int(lines[row + header])
        return path, row + 1 + header

    def _separator(self, path: Path) -> str:
        return self.separator or SEPARATORS[_format_of(path, self.format)]

    def _text(self, path: Path) -> str:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            try:
                raw = gzip.decompress(raw)
            except OSError as exc:
                raise MalformedDataError(f"{path}: not a gzip file ({exc})") from None
        if not raw.strip():
            raise empty_file(path)
        return decode(path, raw, self.encoding)

    def _read_one(self, path: Path) -> pl.DataFrame:
        fmt = _format_of(path, self.format)
        if fmt == "parquet":
            try:
                return pl.read_parquet(path)
            except Exception as exc:  # polars raises several kinds for a bad file
                raise MalformedDataError(
                    f"{path}: not a readable Parquet file ({exc}). Check dataset.adapter.format."
                ) from None
        text = self._text(path)
        sep = self._separator(path)
        data = text.encode()
        # polars reads a blank line as a row of empty values: such lines are left out
        kept = without_blank_lines(text, data, sep)
        body = data if kept is text else kept.encode()
        try:
            frame = pl.read_csv(
                body,
                separator=sep,
                has_header=self.has_header,
                infer_schema_length=10_000,
                truncate_ragged_lines=False,
                schema_overrides=self._text_overrides(body, sep),
            )
        except pl.exceptions.PolarsError as exc:  # one cause: a line with more fields
            raise field_count_error(path, text, data, sep, self.has_header) or MalformedDataError(
                f"{path}: cannot be read as {fmt.upper()} with separator {sep!r} ({exc}). Check "
                "dataset.adapter.separator and has_header."
            ) from None
        # polars fills the fields a short line lacks with nulls, so a short line leaves a null
        # in the last column: only then are the fields of each line counted
        if frame.width > 1 and frame.get_column(frame.columns[-1]).null_count():
            error = field_count_error(path, text, data, sep, self.has_header, frame.columns)
            if error is not None:
                raise error
        if frame.height == 0:
            raise malformed(
                path,
                1,
                "the file has a header but no rows",
                "Add the event rows, or point dataset.adapter.path at the full file.",
            )
        if not self.has_header:  # column_1, column_2, ... whatever polars' own numbering
            frame.columns = [f"column_{j}" for j in range(1, frame.width + 1)]
        return frame

    def _text_overrides(self, data: bytes, sep: str) -> dict[str, Any]:
        """``schema_overrides`` reading ``text_columns`` as text, under polars' own names of
        the columns (without a header, polars numbers them its own way)."""
        if not self.text_columns:
            return {}
        try:
            names = pl.read_csv(data, separator=sep, has_header=self.has_header, n_rows=1).columns
        except pl.exceptions.PolarsError:  # the full read reports what is wrong
            return {}
        ours = names if self.has_header else [f"column_{j}" for j in range(1, len(names) + 1)]
        return {p: pl.String for p, o in zip(names, ours, strict=True) if o in self.text_columns}


class Table:
    """The ``dataset=table`` adapter: roles of columns → canonical ``RawData`` events."""

    # enters the prepared data's cache key: raise it when the same file and columns read into
    # other events (2: ids and categories read as text; 3: ratings that are NaN or ±inf refused)
    reader_version = 3

    def __init__(
        self,
        path: str,
        columns: Mapping[str, Any],
        root: str | None = None,
        format: str = "auto",
        separator: str | None = None,
        has_header: bool = True,
        encoding: str = "utf8",
        item_attributes: Sequence[str] = (),
        side_tables: Mapping[str, Any] | None = None,
        name: str = "table",
        negative_context: str = "keep",
    ) -> None:
        if negative_context not in ("keep", "resample"):
            raise ConfigError(
                f"dataset.adapter.negative_context={negative_context!r}: choose keep (a sampled "
                "negative keeps its positive's context) or resample (another event's context)"
            )
        self.negative_context = negative_context
        self.name = name
        self.source = TableSource(path, root, format, separator, has_header, encoding)
        self.root = root
        self.columns = dict(columns)
        known = {"user", "item", "time", "label", "rating", "rating_threshold"}
        known |= {"sparse", "dense", "multi"}
        stray = sorted(set(self.columns) - known)
        if stray:
            raise ConfigError(
                f"dataset.adapter.columns has unknown roles {stray}; the roles are {sorted(known)}"
            )
        for role in ("user", "item"):
            if not self.columns.get(role):
                raise ConfigError(f"dataset.adapter.columns.{role} must name a column")
        if self.columns.get("label") and self.columns.get("rating"):
            raise ConfigError(
                "dataset.adapter.columns: give either label (a 0/1 column) or rating (with "
                "rating_threshold), not both"
            )
        self.item_attributes = tuple(item_attributes)
        self.side_tables = {k: dict(v) for k, v in (side_tables or {}).items()}
        stray = sorted(set(self.side_tables) - {"user", "item"})
        if stray:
            raise ConfigError(f"dataset.adapter.side_tables takes user and item, not {stray}")

    def files(self) -> tuple[Path, ...]:
        out = list(self.source.files())
        for role, spec in self.side_tables.items():
            out += self._side_source(role, spec).files()
        return tuple(out)

    def _side_source(self, role: str, spec: Mapping[str, Any]) -> TableSource:
        return TableSource(
            str(spec.get("path", "")),
            self.root,
            str(spec.get("format", "auto")),
            spec.get("separator"),
            bool(spec.get("has_header", True)),
            str(spec.get("encoding", "utf8")),
            key=f"dataset.adapter.side_tables.{role}",
        )

    def load(self) -> RawData:
        c = self.columns
        sparse = list(c.get("sparse") or [])
        dense = list(c.get("dense") or [])
        multi = dict(c.get("multi") or {})
        self.source.text_columns = frozenset([c["user"], c["item"], *sparse, *multi])
        frame = self.source.read()
        where = str(self.source.pattern)
        for role, spec in self.side_tables.items():
            frame, extra = self._join_side(frame, role, spec)
            sparse += extra["sparse"]
            dense += extra["dense"]
            multi |= extra["multi"]
        lists = {"sparse": sparse, "dense": dense, "multi": list(multi)}
        seen: dict[str, str] = {}
        for kind, names in lists.items():
            for name in names:
                if name in seen:
                    raise ConfigError(
                        f"{where}: the column '{name}' is listed in columns.{seen[name]} and in "
                        f"columns.{kind}; a feature column is one kind: keep one of them"
                    )
                seen[name] = kind
        roles = [c["user"], c["item"], c.get("time"), c.get("label"), c.get("rating")]
        _require(frame, [r for r in roles if r] + sparse + dense + list(multi), where)
        n = frame.height
        time = (
            pl.col(c["time"]).cast(pl.Int64, strict=False)
            if c.get("time")
            else pl.int_range(n, dtype=pl.Int64)  # no time: file order is time order
        )
        if c.get("time") and frame[c["time"]].dtype == pl.String:
            # epoch seconds kept as text (one bad value makes the column text), else a date
            t = pl.col(c["time"]).str.strip_chars()
            # a date with a UTC offset ("Z", "+02:00") is that instant; one without, UTC
            date = t.str.to_datetime(strict=False, time_zone="UTC")
            time = pl.coalesce(t.cast(pl.Int64, strict=False), date.dt.epoch("s"))
        implicit = not c.get("label") and not c.get("rating")
        if c.get("label"):
            values = frame[c["label"]].drop_nulls().unique(maintain_order=True).to_list()
            bad = [v for v in values if v not in (0, 1, True, False, "0", "1")]
            if bad:
                raise MalformedDataError(
                    f"{where}: the label column {c['label']!r} holds values other than 0/1 "
                    f"(e.g. {bad[:5]}). For ratings use columns.rating with rating_threshold; "
                    "for a log of positives only, leave columns.label empty."
                )
            label = pl.col(c["label"]).cast(pl.Int64)
        elif c.get("rating"):
            rating = pl.col(c["rating"]).cast(pl.Float64, strict=False)
            # text, NaN or ±inf: NaN >= threshold is false, so it would pass as a silent 0 label
            not_number = rating.is_null() & pl.col(c["rating"]).is_not_null()
            bad = frame.select(not_number | rating.is_finite().not_().fill_null(False)).to_series()
            if bad.any():
                row = int(bad.arg_max())
                raise malformed(
                    *self.source.locate(row),
                    f"the rating column {c['rating']!r} holds {frame[c['rating']][row]!r}, "
                    "not a finite number",
                    "Give numeric ratings, or fix or remove that line.",
                )
            if c.get("rating_threshold") is None:  # ratings alone: no click label (not CTR)
                label = pl.lit(None, dtype=pl.Int64)
            else:
                label = (rating >= float(c["rating_threshold"])).cast(pl.Int64)
        else:
            label = pl.lit(1, dtype=pl.Int64)
        exprs = [
            pl.col(c["user"]).cast(pl.String).alias("user_id"),
            pl.col(c["item"]).cast(pl.String).alias("item_id"),
            time.alias("timestamp"),
            label.alias("label"),
        ]
        if c.get("rating"):
            exprs.append(pl.col(c["rating"]).cast(pl.Float64).alias("rating"))
        exprs += [pl.col(s).cast(pl.String).alias(s) for s in sparse]
        # a number that is not one (text, NaN, ±inf) is missing, like an empty cell
        num = {d: pl.col(d).cast(pl.Float64, strict=False) for d in dense}
        exprs += [pl.when(x.is_finite()).then(x).alias(d) for d, x in num.items()]
        exprs += [
            pl.col(m).cast(pl.String).str.split(sep).list.eval(pl.element().str.strip_chars())
            for m, sep in multi.items()
        ]
        events = frame.select(exprs)
        for d in dense:  # a column of words declared numeric: every value would be missing
            if events[d].null_count() < len(events):
                continue
            given = frame[d].cast(pl.String).str.strip_chars().replace("", None).drop_nulls()
            if len(given):
                raise ConfigError(
                    f"{where}: the column '{d}' is listed in columns.dense but holds no number "
                    f"(e.g. {given[0]!r}); list it in columns.sparse if it is categorical"
                )
        missing = events.select(
            pl.col("user_id").is_null().sum(), pl.col("item_id").is_null().sum()
        )
        if missing.row(0) != (0, 0):
            raise MalformedDataError(
                f"{where}: {missing.row(0)[0]} rows lack a user and {missing.row(0)[1]} an item. "
                "Drop those rows or fill them."
            )
        if c.get("label") and events["label"].null_count():
            row = int(events["label"].is_null().arg_max())
            raise malformed(
                *self.source.locate(row),
                f"the label column {c['label']!r} is empty",
                "Give 0 or 1 on every line, or drop the lines without a label.",
            )
        if c.get("time") and events["timestamp"].null_count():
            bad_row = int(events["timestamp"].is_null().arg_max())
            value = frame[c["time"]][bad_row]
            raise malformed(
                *self.source.locate(bad_row),
                f"the time column {c['time']!r} is not epoch seconds or an ISO date read like "
                f"the column's first date here ({value!r})",
                "Give epoch seconds or ISO dates (2024-05-01, 2024-05-01T10:00:00, 2024-05-01T"
                "10:00:00Z, 2024-05-01T10:00:00+02:00) in one form for the whole column (dates "
                "with an offset and dates without one do not mix), or leave columns.time empty.",
            )
        stray = [a for a in self.item_attributes if a not in sparse and a not in multi]
        if stray:
            raise ConfigError(
                f"dataset.adapter.item_attributes {stray} must be sparse or multi columns"
            )
        own = [*(c.get("sparse") or []), *(c.get("dense") or []), *(c.get("multi") or {})]
        context = tuple(x for x in own if x not in self.item_attributes)
        return RawData(
            events,
            sparse=tuple(sparse),
            multi=tuple(multi),
            dense=tuple(dense),
            item_attributes=self.item_attributes,
            files=self.files(),
            fingerprint={"columns": c, "negative_context": self.negative_context},
            implicit=implicit,
            context=context,
            negative_context=self.negative_context,
        )

    def _join_side(
        self, frame: pl.DataFrame, role: str, spec: Mapping[str, Any]
    ) -> tuple[pl.DataFrame, dict[str, Any]]:
        source = self._side_source(role, spec)
        key = spec.get("key")
        on = self.columns["user" if role == "user" else "item"]
        if not key:
            raise ConfigError(f"dataset.adapter.side_tables.{role}.key must name its key column")
        extra = {
            "sparse": list(spec.get("sparse") or []),
            "dense": list(spec.get("dense") or []),
            "multi": dict(spec.get("multi") or {}),
        }
        source.text_columns = frozenset([key, *extra["sparse"], *extra["multi"]])
        side = source.read()
        _require(side, [key, *extra["sparse"], *extra["dense"], *extra["multi"]], source.pattern)
        keep = [key, *extra["sparse"], *extra["dense"], *extra["multi"]]
        clash = [k for k in keep[1:] if k in frame.columns]
        if clash:
            raise ConfigError(
                f"side table {role}: columns {clash} are also in the events table; rename one"
            )
        if side[key].is_duplicated().any():
            raise MalformedDataError(
                f"{source.pattern}: key {key!r} repeats; a side table holds one row per {role}"
            )
        side = side.select(keep).with_columns(pl.col(key).cast(pl.String))
        # in the main table's row order (error messages locate rows by it), on every polars 1.x
        row = "__recbench_row"
        joined = (
            frame.with_columns(pl.col(on).cast(pl.String))
            .with_row_index(row)
            .join(side, left_on=on, right_on=key, how="left")
            .sort(row)
            .drop(row)
        )
        if role == "item":
            self.item_attributes = tuple(
                dict.fromkeys([*self.item_attributes, *extra["sparse"], *extra["multi"]])
            )
        return joined, extra


def _require(frame: pl.DataFrame, names: Sequence[str], where: str) -> None:
    missing = [n for n in names if n not in frame.columns]
    if not missing:
        return
    hint = ""
    if len(frame.columns) == 1:
        hint = (
            f" Only one column was found ({frame.columns[0]!r}): the separator is probably "
            "wrong; set dataset.adapter.separator."
        )
    raise MalformedDataError(
        f"{where}: no column {missing} (the file has {frame.columns}).{hint} Name existing "
        "columns under dataset.adapter.columns, or set has_header=false and use column_1, ..."
    )


__all__ = ["Table", "TableSource"]
