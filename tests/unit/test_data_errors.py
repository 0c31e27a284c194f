"""Broken data files and caches: every reader names the file, the line and the fix, and the CLI
prints that without a traceback. The files are small synthetic copies in each official layout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from recbench.cli import config_dir
from recbench.data import pipeline
from recbench.data.adapters.amazon import AmazonS3Rec
from recbench.data.adapters.movielens import MovieLens1M, MovieLens100K, MovieLensCSV
from recbench.data.adapters.synthetic import SyntheticWorld
from recbench.data.adapters.table import Table
from recbench.data.pipeline import CorruptCacheError, PreparedData, prepare
from recbench.errors import ConfigError, MalformedDataError, RecbenchError
from recbench.testing import table_config
from tests import cli
from tests.unit.test_movielens import write_100k

RESTORE = "Restore the file from the dataset's archive"


def write_csv(root: Path, ratings: bytes, movies: bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_bytes(ratings)
    (root / "movies.csv").write_bytes(
        movies or b"movieId,title,genres\n1,Toy Story (1995),Animation\n3,Heat (1995),Drama\n"
    )
    return root


HEADER = b"userId,movieId,rating,timestamp\n"
GOOD = b"1,1,4.0,964982703\n1,3,3.5,964981247\n"


def load_csv(root: Path, **kw):
    return MovieLensCSV(root=str(root), **kw).load()


# ---------------------------------------------------------------------------- MovieLens 100K / 1M


def test_empty_u_data_names_the_file_and_says_to_restore_it(tmp_path):
    root = write_100k(tmp_path / "ml")
    (root / "u.data").write_bytes(b"")
    with pytest.raises(MalformedDataError, match=r"u\.data:1: the file is empty \(0 bytes\)\. "):
        MovieLens100K(root=str(root)).load()
    (root / "u.data").write_bytes(b"\n  \n")
    with pytest.raises(MalformedDataError, match=r"u\.data:1: the file holds only blank lines"):
        MovieLens100K(root=str(root)).load()
    (root / "u.data").write_text("1\t10\t5\t100\n")
    (root / "u.user").write_bytes(b"")
    with pytest.raises(MalformedDataError, match=r"u\.user:1: the file is empty") as err:
        MovieLens100K(root=str(root)).load()
    assert RESTORE in str(err.value)


def test_non_utf8_byte_reports_line_column_offset_and_the_encoding_option(tmp_path):
    root = write_100k(tmp_path / "ml")
    (root / "u.data").write_bytes(b"1\t10\t5\t100\n1\t11\t3\t101\xe9\n")
    with pytest.raises(MalformedDataError) as err:
        MovieLens100K(root=str(root)).load()
    msg = str(err.value)
    # line 2; offset 21 = 11 bytes of line 1 + 10 before the bad byte; column 11 of line 2
    assert f"{root / 'u.data'}:2: byte 0xe9 at byte offset 21 (column 11) is not valid utf8" in msg
    assert "++dataset.adapter.encoding=latin-1" in msg
    # the option reads a latin-1 file as latin-1
    (root / "u.data").write_text("1\t10\t5\t100\n")
    (root / "u.user").write_bytes("1|24|M|t\xe9chnicien|85711\n".encode("latin-1"))
    with pytest.raises(MalformedDataError, match=r"u\.user:1: byte 0xe9"):
        MovieLens100K(root=str(root)).load()
    raw = MovieLens100K(root=str(root), encoding="latin-1").load()
    assert raw.events["occupation"].to_list() == ["t\xe9chnicien"]


def test_wrong_field_counts_and_values_name_the_fields(tmp_path):
    root = write_100k(tmp_path / "ml")
    (root / "u.data").write_text("1\t10\t5\t100\n1\t11\t3\n")
    with pytest.raises(
        MalformedDataError,
        match=r"u\.data:2: expected 4 tab-separated fields \(user_id, item_id, rating, "
        r"timestamp\), found 3\. Fix or remove that line\.",
    ):
        MovieLens100K(root=str(root)).load()
    (root / "u.data").write_text("1\t10\t5\t100\n1\t11\t\t101\n")
    with pytest.raises(MalformedDataError, match=r"u\.data:2: field 'rating' is empty"):
        MovieLens100K(root=str(root)).load()
    (root / "u.data").write_text("1\t10\tfive\t100\n")
    with pytest.raises(MalformedDataError, match=r"u\.data:1: field 'rating' is not an integer"):
        MovieLens100K(root=str(root)).load()


def test_1m_empty_and_short_lines(tmp_path):
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n")
    (tmp_path / "movies.dat").write_text("10::Toy Story (1995)::Animation\n")
    (tmp_path / "ratings.dat").write_bytes(b"")
    with pytest.raises(MalformedDataError, match=r"ratings\.dat:1: the file is empty"):
        MovieLens1M(root=str(tmp_path)).load()
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::10::5\n")
    with pytest.raises(MalformedDataError, match=r"ratings\.dat:2: expected 4 '::'-separated"):
        MovieLens1M(root=str(tmp_path)).load()
    # 1M is latin-1 by default; a UTF-8 copy reads with the option
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n")
    (tmp_path / "movies.dat").write_bytes("10::Caf\u00e9 (1995)::Drama\n".encode())
    raw = MovieLens1M(root=str(tmp_path), encoding="utf-8").load()
    assert raw.events.height == 1


# ---------------------------------------------------------------------------- MovieLens CSV


def test_header_only_ratings_csv_says_there_are_no_rows(tmp_path):
    root = write_csv(tmp_path, HEADER)
    with pytest.raises(
        MalformedDataError, match=r"ratings\.csv:2: the file holds its header but no rows\. Restore"
    ):
        load_csv(root)
    write_csv(tmp_path, HEADER + b"\n\n")
    with pytest.raises(MalformedDataError, match="header but no rows"):
        load_csv(root)
    write_csv(tmp_path, b"")
    with pytest.raises(MalformedDataError, match=r"ratings\.csv:1: the file is empty \(0 bytes\)"):
        load_csv(root)


def test_csv_non_utf8_names_line_and_offset(tmp_path):
    root = write_csv(tmp_path, HEADER + GOOD + b"2,3,4\xe9.0,964981247\n")
    with pytest.raises(MalformedDataError) as err:
        load_csv(root)
    offset = len(HEADER + GOOD) + 5
    assert f"ratings.csv:4: byte 0xe9 at byte offset {offset} (column 6) is not valid utf8" in str(
        err.value
    )
    # in a text column too (movies.csv titles), and the option reads latin-1 files
    write_csv(tmp_path, HEADER + GOOD, b"movieId,title,genres\n1,Caf\xe9,Drama\n3,Heat,Drama\n")
    with pytest.raises(MalformedDataError, match=r"movies\.csv:2: byte 0xe9 .*latin-1"):
        load_csv(root)
    raw = load_csv(root, encoding="latin-1")
    assert raw.events.height == 2


@pytest.mark.parametrize(
    "header, problem",
    [
        (b"userId,movieId,rating\n", r"missing column\(s\) timestamp"),
        (b"userId,movieId,rating,timestamp,tag\n", r"unexpected column\(s\) tag"),
        (b"movieId,userId,rating,timestamp\n", r"the columns are in another order"),
    ],
)
def test_csv_header_names_missing_or_extra_columns(tmp_path, header, problem):
    root = write_csv(tmp_path, header + GOOD)
    with pytest.raises(
        MalformedDataError, match=rf"ratings\.csv:1: expected the header .*{problem}"
    ):
        load_csv(root)


@pytest.mark.parametrize(
    "line, problem",
    [
        (b"2,3,4.0\n", r"expected 4 comma-separated fields \(userId, movieId, rating, timestamp\)"),
        (b"2,3,4.0,9,7\n", "expected 4 comma-separated fields"),
        (b"2,3,,964981247\n", "field 'rating' is empty"),
        (b"2,3,four,964981247\n", "field 'rating' is not a number: 'four'"),
        (b"2,x3,4.0,964981247\n", "field 'movieId' is not an integer: 'x3'"),
        (b"2,3,nan,964981247\n", "field 'rating' is not a finite number: 'nan'"),
        (b"2.5,3,4.0,964981247\n", "field 'userId' is not an integer: '2.5'"),
    ],
)
def test_csv_bad_line_is_named(tmp_path, line, problem):
    root = write_csv(tmp_path, HEADER + GOOD + b"\n" + line)  # a blank line before it: line 5
    with pytest.raises(MalformedDataError, match=rf"ratings\.csv:5: {problem}"):
        load_csv(root)


# ---------------------------------------------------------------------------- a table of one's own

TABLE = {"user": "user", "item": "item", "label": "label", "dense": ["price"]}
SHORT = "expected 4 comma-separated fields as in the header \\(user, item, label, price\\), found 3"


def load_table(root: Path, body: str, **kw):
    (root / "log.csv").write_text(body)
    return Table("log.csv", TABLE, root=str(root), **kw).load()


def test_table_short_line_is_refused_with_its_line_and_how_many(tmp_path):
    body = "user,item,label,price\n1,2,1,0.5\n5,17,1\n6,3,0,0.2\n8,4,1\n"
    with pytest.raises(MalformedDataError) as err:
        load_table(tmp_path, body)
    assert str(err.value) == (
        f"{tmp_path / 'log.csv'}:3: expected 4 comma-separated fields as in the header (user, "
        "item, label, price), found 3 (the first of 2 lines with fewer fields). Add the missing "
        "values (an empty value still takes its separator) or remove those lines."
    )
    # without a header, the first line sets the count; a line with more fields is named alike
    cols = {"user": "column_1", "item": "column_2"}
    (tmp_path / "bare.csv").write_text("1,2,1,0.5\n5,17,1\n")
    with pytest.raises(
        MalformedDataError,
        match=r"bare\.csv:2: expected 4 comma-separated fields as on line 1 \(column_1 to "
        r"column_4\), found 3 \(the only line with fewer fields\)\. Add the missing values",
    ):
        Table("bare.csv", cols, root=str(tmp_path), has_header=False).load()
    with pytest.raises(
        MalformedDataError,
        match=r"log\.csv:4: expected 4 comma-separated fields as in the header \(user, item, "
        r"label, price\), found 5 \(the only line with more fields\)\. Remove the extra values",
    ):
        load_table(tmp_path, "user,item,label,price\n1,2,1,0.5\n\n5,17,1,0.1,9\n")


def test_table_separator_inside_quotes_is_no_field_boundary(tmp_path):
    good = 'user,item,label,price\n1,"a,b",1,0.5\n2,"c,d,e",0,\n3,"x""y,z",1,0.1\n'
    # only the last line is short, though it holds as many commas as the header
    with pytest.raises(
        MalformedDataError, match=rf"log\.csv:5: {SHORT} \(the only line with fewer fields\)"
    ):
        load_table(tmp_path, good + '4,"p,q",1\n')
    # a quoted value over two lines: the short line after it is named by its own line
    with pytest.raises(
        MalformedDataError, match=rf"log\.csv:4: {SHORT} \(the only line with fewer fields\)"
    ):
        load_table(tmp_path, 'user,item,label,price\n1,"two\nlines",1,\n2,x,1\n')
    raw = load_table(tmp_path, good)
    assert raw.events["item_id"].to_list() == ["a,b", "c,d,e", 'x"y,z']


def test_table_empty_last_value_is_no_short_line(tmp_path):
    good = "user,item,label,price\n1,2,1,\n5,17,1,\n6,3,0,0.5\n"
    for sep, name in [(",", "log.csv"), ("\t", "log.tsv")]:
        (tmp_path / name).write_text(good.replace(",", sep) + sep.join("741") + "\n")
        with pytest.raises(
            MalformedDataError, match=rf"{name}:5: .*found 3 \(the only line with fewer fields\)"
        ):
            Table(name, TABLE, root=str(tmp_path)).load()
    raw = load_table(tmp_path, good)
    assert raw.events["price"].to_list() == [None, None, 0.5]
    assert raw.events["item_id"].to_list() == ["2", "17", "3"]


def test_table_blank_lines_are_skipped_and_other_lines_keep_their_numbers(tmp_path):
    # empty and whitespace-only lines in the middle and at the end, LF or CRLF: no row of nulls
    body = "user,item,label,price\n1,2,1,0.5\n\n5,17,0,\n  \t \n6,3,1,0.2\n\n\n"
    for text in (body, body.replace("\n", "\r\n"), body + "  "):
        raw = load_table(tmp_path, text)
        assert raw.events["user_id"].to_list() == ["1", "5", "6"]
        assert raw.events["label"].to_list() == [1, 0, 1]
        assert raw.events["price"].to_list() == [0.5, None, 0.2]
    # a blank line inside a quoted value is part of it; a line of empty values is no blank line
    raw = load_table(tmp_path, 'user,item,label,price\n1,"a\n\nb",1,\n\n2,c,0,\n')
    assert raw.events["item_id"].to_list() == ["a\n\nb", "c"]
    with pytest.raises(MalformedDataError, match="1 rows lack a user and 1 an item"):
        load_table(tmp_path, "user,item,label,price\n1,2,1,0.5\n,,,\n\n")
    with pytest.raises(MalformedDataError, match=r"log\.csv:1: the file has a header but no rows"):
        load_table(tmp_path, "user,item,label,price\n\n \n")
    # without a header: blank lines before the first line too
    (tmp_path / "bare.csv").write_text("\n\n1,2\n\n3,4\n\n")
    cols = {"user": "column_1", "item": "column_2"}
    bare = Table("bare.csv", cols, root=str(tmp_path), has_header=False).load()
    assert bare.events["item_id"].to_list() == ["2", "4"]
    # the line numbers of errors count the blank lines (and a quoted value's lines)
    with pytest.raises(MalformedDataError, match=rf"log\.csv:6: {SHORT} \(the only line"):
        load_table(tmp_path, "user,item,label,price\n1,2,1,0.5\n\n  \n\n5,17,1\n\n")
    (tmp_path / "t.csv").write_text('user,item,ts,stars\n1,"a\nb",10,4\n\n\n3,4,soon,x\n\n')
    cols = {"user": "user", "item": "item", "time": "ts"}
    with pytest.raises(MalformedDataError, match=r"t\.csv:6: the time column 'ts' is not"):
        Table("t.csv", cols, root=str(tmp_path)).load()
    cols = {"user": "user", "item": "item", "rating": "stars"}
    with pytest.raises(MalformedDataError, match=r"t\.csv:6: the rating column 'stars' holds 'x'"):
        Table("t.csv", cols, root=str(tmp_path)).load()
    # of several files, the one that holds the line is named
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.csv").write_text("user,item,ts\n1,2,2024-05-01\n\n3,4,10\n")
    (tmp_path / "parts" / "b.csv").write_text("user,item,ts\n\n5,6,12\n\n7,8,late\n")
    cols = {"user": "user", "item": "item", "time": "ts"}
    with pytest.raises(MalformedDataError, match=r"parts/b\.csv:5: the time column 'ts'"):
        Table("parts/*.csv", cols, root=str(tmp_path)).load()


def test_table_files_whose_column_differs_in_kind_name_the_bad_value(tmp_path):
    """Of several files, one whose column holds a value that is not a number reads that column
    as text: the files still join, and the bad value is named by its file and line; integers
    in one file and decimals in another join as numbers."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.csv").write_text("user,item,ts,stars\n1,2,10,4\n3,4,11,5\n")
    b = tmp_path / "p" / "b.csv"
    b.write_text("user,item,ts,stars\n5,6,12,3.5\n7,8,late,2\n")
    cols = {"user": "user", "item": "item", "time": "ts", "rating": "stars"}
    with pytest.raises(MalformedDataError, match=r"p/b\.csv:3: the time column 'ts' is not"):
        Table("p/*.csv", cols, root=str(tmp_path)).load()
    b.write_text("user,item,ts,stars\n5,6,12,3.5\n7,8,13,x\n")
    with pytest.raises(MalformedDataError, match=r"p/b\.csv:3: the rating column 'stars' holds"):
        Table("p/*.csv", cols, root=str(tmp_path)).load()
    b.write_text("user,item,ts,stars\n5,6,12,3.5\n7,8,13,2\n")
    events = Table("p/*.csv", cols, root=str(tmp_path)).load().events
    assert events["rating"].to_list() == [4.0, 5.0, 3.5, 2.0]
    assert events["timestamp"].to_list() == [10, 11, 12, 13]


POLARS_SEP = (
    "polars reads tables whose separator is one character of one byte (such as , ; | or a tab)."
)


@pytest.mark.parametrize(
    ("sep", "start", "fix"),
    [
        ("::", "'::' is 2 characters", "Convert the file to a one-character separator that"),
        ("\\t", "'\\t' is 2 characters", "For a tab, set dataset.adapter.format=tsv (or name"),
        ("§", "'§' is 2 bytes in UTF-8", "Convert the file to a one-character separator that"),
    ],
)
def test_table_separator_of_more_than_one_byte_is_refused_with_what_to_do(
    tmp_path, sep, start, fix
):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n")
    (tmp_path / "log.csv").write_text("column_1,column_2\n1,2\n")
    cols = {"user": "column_1", "item": "column_2"}
    with pytest.raises(ConfigError) as err:
        Table("ratings.dat", cols, root=str(tmp_path), separator=sep, has_header=False).load()
    assert str(err.value).startswith(f"dataset.adapter.separator={start}: {POLARS_SEP} {fix}")
    if sep == "::":
        assert str(err.value).endswith(
            "(e.g. a tab for '::': `sed 's/::/\\t/g' ratings.dat > ratings.tsv`), or for "
            "MovieLens-1M's ratings.dat use dataset=movielens-1m, which reads its '::' files."
        )
    side = {"item": {"path": "items.dat", "key": "item", "separator": sep}}
    with pytest.raises(ConfigError, match=r"^dataset\.adapter\.side_tables\.item\.separator="):
        Table("log.csv", cols, root=str(tmp_path), side_tables=side).files()


# ---------------------------------------------------------------------------- Amazon, synthetic


def write_amazon(root: Path, seq: bytes, attrs: bytes = b'{"11": [1], "12": [2]}') -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Beauty.txt").write_bytes(seq)
    (root / "Beauty_item2attributes.json").write_bytes(attrs)
    return root


def test_amazon_empty_and_undecodable_files(tmp_path):
    root = write_amazon(tmp_path, b"")
    with pytest.raises(MalformedDataError, match=r"Beauty\.txt:1: the file is empty"):
        AmazonS3Rec("Beauty", root=str(root)).load()
    write_amazon(tmp_path, b"1 11 12\n", b'{"11": [1],\n "12\xff": [2]}')
    with pytest.raises(MalformedDataError, match=r"item2attributes\.json:2: byte 0xff"):
        AmazonS3Rec("Beauty", root=str(root)).load()
    write_amazon(tmp_path, b"1 11 12\n", b"")
    with pytest.raises(MalformedDataError, match=r"item2attributes\.json:1: the file is empty"):
        AmazonS3Rec("Beauty", root=str(root)).load()


@pytest.mark.parametrize(
    "world, problem",
    [
        ({"n_user": 10}, r"dataset\.world\.n_user is not a parameter of the synthetic world"),
        ({"n_users": 0}, r"dataset\.world\.n_users must be at least 1, got 0"),
        ({"n_users": "many"}, r"dataset\.world\.n_users must be an integer, got 'many'"),
        ({"n_users": 10.5}, r"dataset\.world\.n_users must be an integer"),
        ({"base_ctr": 1.5}, r"dataset\.world\.base_ctr is a share and must lie in \[0, 1\]"),
        ({"version": 1}, r"dataset\.world\.version=1 is not a synthetic world version"),
        ({"seed": "x"}, r"dataset\.world\.seed must be an integer"),
    ],
)
def test_synthetic_world_parameters_are_checked(world, problem):
    with pytest.raises(ConfigError, match=problem):
        SyntheticWorld(world)


# ---------------------------------------------------------------------------- the cache


def tiny_cfg():
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("data", ["dataset=synthetic", "++dataset.world.n_users=60"])
    return cfg.dataset


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "other_dict", "empty"],
)
def test_corrupt_cache_is_named_deleted_and_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    cfg = tiny_cfg()
    first = prepare(cfg, log=lambda m: None)
    path = Path(first.info["cache_dir"])
    file = path / "data.pt"
    blob = file.read_bytes()
    if damage == "garbage":
        file.write_bytes(b"not a torch file at all")
    elif damage == "truncated":
        file.write_bytes(blob[: len(blob) // 2])  # what a full disk or a killed copy leaves
    elif damage == "other_dict":
        torch.save({"key": first.key}, file)
    else:
        file.write_bytes(b"")
    with pytest.raises(CorruptCacheError) as err:
        PreparedData.load(path)
    assert str(file) in str(err.value) and f"Delete {path}" in str(err.value)
    messages: list[str] = []
    again = prepare(cfg, log=messages.append)
    assert any(str(file) in m and "unreadable" in m and "rebuilding" in m for m in messages)
    assert torch.equal(again.splits["test"]["label"], first.splits["test"]["label"])
    assert PreparedData.load(path).key == first.key  # the rebuilt cache reads back


def test_failed_cache_write_leaves_no_file_and_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 0 vs 17")

    monkeypatch.setattr(pipeline.torch, "save", full_disk)
    with pytest.raises(
        RecbenchError,
        match=r"cannot write the prepared-data cache .*data\.pt: .*"
        r"Free space there, or set RECBENCH_CACHE_DIR",
    ):
        prepare(tiny_cfg(), log=lambda m: None)
    left = [p.name for p in (tmp_path / "prepared").rglob("*data.pt*")]
    assert left == []


def test_two_writers_of_one_cache_entry_at_once_both_succeed(tmp_path, monkeypatch):
    # two runs preparing the same data on a cold cache (a compare's parallel runs): the second
    # writes and renames its file while the first is between writing and renaming its own
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    cfg = tiny_cfg()
    first = prepare(cfg, log=lambda m: None)
    path = Path(first.info["cache_dir"])
    save, nested = pipeline.torch.save, []

    def interleaved(obj, f, *a, **k):
        save(obj, f, *a, **k)
        if not nested:  # the other writer, start to finish, before this one renames
            nested.append(f)
            first.save(path)

    monkeypatch.setattr(pipeline.torch, "save", interleaved)
    first.save(path)
    assert len(nested) == 1
    assert PreparedData.load(path).key == first.key
    assert [p.name for p in path.iterdir() if p.name.endswith(".tmp")] == []


# ---------------------------------------------------------------------------- the CLI


def recbench_data(*args: str, cwd: Path, verb: str = "info") -> subprocess.CompletedProcess:
    return cli.run(["data", verb, *args], cwd, timeout=300)


def test_cli_bad_data_files_exit_2_with_file_line_fix_and_no_traceback(tmp_path):
    root = write_100k(tmp_path / "ml")
    (root / "u.data").write_bytes(b"")
    proc = recbench_data("dataset=movielens-100k", f"dataset.root={root}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"{root / 'u.data'}:1: the file is empty (0 bytes)" in " ".join(out.split())
    assert "Traceback" not in out
    csv_root = write_csv(tmp_path / "csv", HEADER)
    proc = recbench_data("dataset=movielens-latest", f"dataset.root={csv_root}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "ratings.csv:2: the file holds its header but no rows" in " ".join(out.split())
    assert "Traceback" not in out and "zero-size array" not in out
    (root / "u.data").write_bytes(b"1\t10\t5\t100\n1\t11\t3\t101\xe9\n")
    proc = recbench_data("dataset=movielens-100k", f"dataset.root={root}", cwd=tmp_path)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert f"{root / 'u.data'}:2: byte 0xe9 at byte offset 21 (column 11) is not valid utf8" in out
    assert "++dataset.adapter.encoding=latin-1" in out and "Traceback" not in out


def test_cli_short_line_of_a_table_is_one_line_naming_file_and_line(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,label\n1,2,1\n5,17\n")
    cols = [f"dataset.adapter.columns.{c}={c}" for c in ("user", "item", "label")]
    proc = recbench_data(
        "dataset=table", f"dataset.adapter.path={tmp_path / 'log.csv'}", *cols, cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    (line,) = {x for x in out.splitlines() if x.startswith("error: ")}
    assert line.startswith(f"error: {tmp_path / 'log.csv'}:3: expected 3 comma-separated fields")
    assert "found 2 (the only line with fewer fields)" in line and "Traceback" not in out


def test_cli_separator_of_two_characters_is_one_line(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    proc = recbench_data(
        "dataset=table",
        f"dataset.adapter.path={tmp_path / 'ratings.dat'}",
        "dataset.adapter.separator=::",
        "dataset.adapter.has_header=false",
        "dataset.adapter.columns.user=column_1",
        "dataset.adapter.columns.item=column_2",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    (line,) = {x for x in out.splitlines() if x.startswith("error: ")}
    assert line.startswith("error: dataset.adapter.separator='::' is 2 characters: polars reads")
    assert "dataset=movielens-1m" in line and "Traceback" not in out


def test_cli_rebuilds_a_corrupt_cache_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    args = ("dataset=synthetic", "++dataset.world.n_users=60")
    first = recbench_data(*args, cwd=tmp_path, verb="prepare")
    assert first.returncode == 0, first.stdout + first.stderr
    (file,) = (tmp_path / "cache" / "prepared").glob("synthetic-*/data.pt")
    file.write_bytes(file.read_bytes()[:4096])  # truncated
    again = recbench_data(*args, cwd=tmp_path)
    out = " ".join((again.stdout + again.stderr).split())
    assert again.returncode == 0, out
    assert f"rebuilding synthetic: the cache {file} is unreadable (" in out
    assert "deleting it" in out and "Traceback" not in out
    assert PreparedData.load(file.parent).info["rows"]


def test_the_data_command_lists_config_problems_before_reading_data(capsys):
    """`recbench data info dataset=table` without a path raised OmegaConf's traceback."""
    from recbench.cli import main

    with pytest.raises(SystemExit) as ended:
        main(["data", "info", "dataset=table"])
    assert ended.value.code == 2
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert "dataset.adapter.path must be set (it is ??? in the config)" in out
    assert "Traceback" not in out


def test_the_data_command_names_the_key_a_misspelt_one_was_meant_to_be(capsys):
    """`recbench data` printed Hydra's advice to add the misspelt key with `+` (which nothing
    reads) and no hint; a training key got the same advice instead of where it goes."""
    from recbench.cli import main

    def refused(*overrides: str) -> str:
        with pytest.raises(SystemExit) as ended:
            main(["data", "info", *overrides])
        assert ended.value.code == 2
        captured = capsys.readouterr()
        return " ".join((captured.out + captured.err).split())

    out = refused("dataset=movielens-100k", "dataset.split.sed=3")
    assert "hint: dataset.split.sed is not a key; did you mean dataset.split.seed?" in out
    out = refused("trainer.max_epochs=1")
    assert (
        "hint: trainer.max_epochs: recbench data takes dataset=<name>, dataset.<key>=<value> "
        "and force=; training settings go to recbench train"
    ) in out
    assert "Traceback" not in out


def test_cli_data_refusal_of_an_adapter_setting_is_one_line(tmp_path):
    """A setting the adapter's constructor refuses (raised inside Hydra's instantiate) is one
    line from `recbench data`, as from `recbench train`, not Hydra's wrapped traceback."""
    (tmp_path / "log.csv").write_text("user,item,label\n1,2,1\n3,4,0\n")
    proc = recbench_data(
        "dataset=table",
        f"dataset.adapter.path={tmp_path / 'log.csv'}",
        "dataset.adapter.negative_context=bogus",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    (line,) = {x for x in out.splitlines() if x.startswith("error: ")}
    assert line.startswith("error: dataset.adapter.negative_context='bogus': choose keep")
    assert "Traceback" not in out and "InstantiationException" not in out


def test_a_table_too_short_for_the_ranking_splits_names_the_split_that_applies(
    tmp_path, monkeypatch
):
    """Top-K splits by task.split: its refusal told the user to change dataset.split, which
    top-K does not read. Leave-one-out says why it held nothing out; next-item says how long
    the sequences are."""
    from recbench.data.implicit import prepare as prepare_topk
    from recbench.data.sequences import prepare_sequences

    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "log.csv").write_text("u,i\n" + "".join(f"{u},{u % 7}\n" for u in range(40)))
    quiet = {"log": lambda _: None}
    with pytest.raises(MalformedDataError) as err:
        prepare_topk(table_config(tmp_path, "topk", "mf"), **quiet)
    message = str(err.value)
    assert message.startswith("40 positives leave the val and test split empty under ")
    held = "task.split.kind=leave_one_out (it holds out positives of users with three or more; "
    assert held in message
    assert "the most a user has: 1)" in message and "choose another task.split (" in message
    assert "dataset.split" not in message
    cfg = table_config(tmp_path, "topk", "mf", "task.split.kind=user_temporal")
    with pytest.raises(MalformedDataError, match=r"under task\.split\.kind=user_temporal: "):
        prepare_topk(cfg, **quiet)
    with pytest.raises(
        ConfigError, match=r"no user has three or more interactions \(40 users, the most a user "
    ):
        prepare_sequences(table_config(tmp_path, "next_item", "sasrec"), **quiet)
