"""Delimited text as polars splits it, line by line: the number of fields of each line (a
separator inside a quoted value does not count; a blank line has none), the text without its
blank lines, the error for a line whose fields differ from the header's, and the refusal of a
separator polars cannot split on (more than one byte)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from recbench.data.adapters.base import malformed
from recbench.errors import ConfigError, MalformedDataError

SEPARATOR_NAMES = {",": "comma", "\t": "tab"}
QUOTE = '"'  # polars' default quote character, which the text formats are read with
# separators for reading each line whole as one field: the first that the text does not hold
WHOLE_LINE = ("\x1f", "\x1e", "\x1d", "\x1c", "\x00")
# a blank line (empty or whitespace only) with the line break before it (the text searched has
# one put before its first line)
BLANK_LINE = re.compile(r"\n(?:[^\S\n]*(?=\n)|[^\S\n]+\Z)")


def field_count_error(
    path: Path,
    text: str,
    data: bytes,
    sep: str,
    has_header: bool,
    names: Sequence[str] | None = None,
) -> MalformedDataError | None:
    """The error for the first line whose number of fields differs from the header's (without a
    header, from the first line's), with how many lines are short or long alike; None if none."""
    counts = field_counts(text, data, sep)
    if counts is None:
        return None
    counts = counts.filter(pl.col("fields") > 0)
    if counts.height < 2:
        return None
    first, want = counts.row(0)
    off = counts.slice(1).filter(pl.col("fields") != want)
    if off.height == 0:
        return None
    line, found = off.row(0)
    fewer = found < want
    alike = off.filter((pl.col("fields") < want) == fewer).height
    if has_header:
        if names is None:
            try:
                names = pl.read_csv(data, separator=sep, n_rows=0).columns
            except pl.exceptions.PolarsError:
                names = []
        shown = list(names) if len(names) <= 8 else [*names[:3], "...", names[-1]]
        reference = f"as in the header ({', '.join(shown)})" if shown else "as in the header"
    else:
        reference = f"as on line {first} (column_1 to column_{want})"
    kind = SEPARATOR_NAMES.get(sep, repr(sep))
    which = "fewer" if fewer else "more"
    tally = "the only line" if alike == 1 else f"the first of {alike} lines"
    lines = "that line" if alike == 1 else "those lines"
    fix = (
        f"Add the missing values (an empty value still takes its separator) or remove {lines}."
        if fewer
        else f"Remove the extra values from {lines} or quote the values that hold the "
        "separator, or check dataset.adapter.separator and has_header."
    )
    return malformed(
        path,
        line,
        f"expected {want} {kind}-separated fields {reference}, found {found} ({tally} with "
        f"{which} fields)",
        fix,
    )


def without_blank_lines(text: str, data: bytes, sep: str) -> str:
    """``text`` less its blank lines (empty or whitespace only) outside quoted values; ``text``
    itself when it has none."""
    padded = "\n" + text  # the first line too follows a line break
    if not BLANK_LINE.search(padded):
        return text
    counts = field_counts(text, data, sep)
    if counts is None:
        return text
    blank = set(counts.filter(pl.col("fields") == 0)["line"].to_list())
    line, pos = 0, 0

    def drop(match: re.Match[str]) -> str:
        nonlocal line, pos
        line += padded.count("\n", pos, match.start() + 1)  # the line after that line break
        pos = match.start() + 1
        return "" if line in blank else match.group()

    return BLANK_LINE.sub(drop, padded)[1:]


def field_counts(text: str, data: bytes, sep: str) -> pl.DataFrame | None:
    """The first line (1-based) and number of fields of each record of ``text``, as polars
    splits them: a separator inside a quoted field does not count, and a blank line (empty or
    whitespace only) has 0 fields. None if unknown."""
    spare = next((c for c in WHOLE_LINE if c not in text), None)
    if spare is None:
        return csv_field_counts(text, sep)
    try:
        lines = pl.read_csv(
            data, has_header=False, separator=spare, quote_char=None, schema={"text": pl.String}
        ).with_row_index("line", offset=1)
    except pl.exceptions.PolarsError:
        return csv_field_counts(text, sep)
    line = pl.col("text")
    lines = lines.with_columns(line.fill_null(""))  # an empty line is read as null
    fields = (
        pl.when(line.str.strip_chars() == "")
        .then(0)
        .otherwise(line.str.count_matches(sep, literal=True).cast(pl.Int64) + 1)
        .alias("fields")
    )
    if QUOTE not in text:
        return lines.select(pl.col("line").cast(pl.Int64), fields)
    quotes = line.str.count_matches(QUOTE, literal=True)
    if lines.select((quotes % 2 == 1).any()).item():
        return csv_field_counts(text, sep)  # a quoted value may span lines
    quoted = lines.select(line.str.contains(QUOTE, literal=True)).to_series()
    # a quote opens a quoted value only at the start of a field; "" inside is a quote
    unquoted = line.str.replace_all(f'(^|\\x{{{ord(sep):x}}})"(?:[^"]|"")*"', "${1}")
    return (
        pl.concat([lines.filter(~quoted), lines.filter(quoted).with_columns(unquoted)])
        .select(pl.col("line").cast(pl.Int64), fields)
        .sort("line")
    )


def csv_field_counts(text: str, sep: str) -> pl.DataFrame | None:
    """``field_counts`` by Python's csv module, for text whose quoted values may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quotechar=QUOTE)
    rows = []
    start = 1
    try:
        for record in reader:
            blank = len(record) < 2 and not (record and record[0].strip())
            rows.append((start, 0 if blank else len(record)))
            start = reader.line_num + 1
    except csv.Error:  # a value over csv's size limit
        return None
    return pl.DataFrame(rows, schema={"line": pl.Int64, "fields": pl.Int64}, orient="row")


def bad_separator(sep: str, key: str) -> ConfigError:
    shown = f"'{sep}'" if sep.isprintable() else repr(sep)  # '\t' as typed, not '\\t'
    size = f"{len(sep)} characters" if len(sep) > 1 else f"{len(sep.encode())} bytes in UTF-8"
    if sep == "\\t":
        fix = (
            f"For a tab, set {key}.format=tsv (or name the file .tsv) and leave the separator "
            "unset."
        )
    else:
        fix = (
            "Convert the file to a one-character separator that no value holds (e.g. a tab for "
            "'::': `sed 's/::/\\t/g' ratings.dat > ratings.tsv`), or for MovieLens-1M's "
            "ratings.dat use dataset=movielens-1m, which reads its '::' files."
        )
    return ConfigError(
        f"{key}.separator={shown} is {size}: polars reads tables whose separator is one "
        f"character of one byte (such as , ; | or a tab). {fix}"
    )


__all__ = [
    "bad_separator",
    "csv_field_counts",
    "field_count_error",
    "field_counts",
    "without_blank_lines",
]
