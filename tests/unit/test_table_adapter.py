"""dataset=table: a user's table declared in YAML alone — every role, format and error."""

import gzip

import numpy as np
import polars as pl
import pytest
import torch

from recbench.data.adapters.table import Table
from recbench.data.pipeline import prepare
from recbench.errors import ConfigError, DataNotFoundError, MalformedDataError
from recbench.testing import table_config


def _log(n: int = 600, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "uid": rng.integers(0, 40, n),
            "iid": rng.integers(0, 60, n),
            "ts": np.arange(n) * 7,
            "hour": rng.integers(0, 24, n),
            "city": rng.choice(["paris", "oslo", "lima"], n),
            "price": rng.random(n).round(3),
            "tags": ["|".join(rng.choice(["x", "y", "z"], 2, replace=False)) for _ in range(n)],
            "clicked": rng.integers(0, 2, n),
            "stars": rng.integers(1, 6, n),
        }
    )


COLS = {"user": "uid", "item": "iid", "time": "ts", "sparse": ["hour", "city"], "dense": ["price"]}


@pytest.mark.parametrize("suffix", ["csv", "tsv", "csv.gz", "parquet"])
def test_each_format_reads_the_same_events(tmp_path, suffix):
    df = _log()
    path = tmp_path / f"log.{suffix}"
    if suffix == "parquet":
        df.write_parquet(path)
    elif suffix == "csv.gz":
        path.write_bytes(gzip.compress(df.write_csv().encode()))
    else:
        df.write_csv(path, separator="\t" if suffix == "tsv" else ",")
    raw = Table(path.name, COLS, root=str(tmp_path)).load()
    assert raw.events.height == df.height and raw.implicit
    assert raw.events["timestamp"].to_list() == df["ts"].to_list()
    assert set(raw.sparse) == {"hour", "city"} and raw.dense == ("price",)


def test_a_file_without_a_header_names_its_columns_from_column_1(tmp_path):
    df = _log()
    (tmp_path / "log.csv").write_text(df.write_csv(include_header=False))
    cols = {"user": "column_1", "item": "column_2", "time": "column_3", "sparse": ["column_5"]}
    raw = Table("log.csv", cols, root=str(tmp_path), has_header=False).load()
    ids = raw.events.select(pl.col("user_id", "item_id").cast(pl.Int64))
    assert ids["user_id"].to_list() == df["uid"].to_list()  # not shifted by one
    assert ids["item_id"].to_list() == df["iid"].to_list()
    assert raw.events["timestamp"].to_list() == df["ts"].to_list()


def test_label_rating_and_implicit_roles(tmp_path):
    df = _log()
    df.write_csv(tmp_path / "log.csv")
    labelled = Table("log.csv", {**COLS, "label": "clicked"}, root=str(tmp_path)).load()
    assert not labelled.implicit
    assert labelled.events["label"].to_list() == df["clicked"].to_list()
    rated = Table(
        "log.csv", {**COLS, "rating": "stars", "rating_threshold": 4}, root=str(tmp_path)
    ).load()
    assert rated.events["label"].to_list() == (df["stars"] >= 4).cast(pl.Int64).to_list()
    assert rated.events["rating"].to_list() == df["stars"].cast(pl.Float64).to_list()


def test_no_time_column_uses_file_order_and_multi_values_split(tmp_path):
    _log().write_csv(tmp_path / "log.csv")
    cols = {"user": "uid", "item": "iid", "multi": {"tags": "|"}}
    raw = Table("log.csv", cols, root=str(tmp_path)).load()
    assert raw.events["timestamp"].to_list() == list(range(600))
    assert all(len(v) == 2 for v in raw.events["tags"].to_list())


def test_side_tables_join_on_their_keys(tmp_path):
    _log().write_csv(tmp_path / "log.csv")
    pl.DataFrame({"uid": range(40), "segment": [f"s{i % 3}" for i in range(40)]}).write_csv(
        tmp_path / "users.csv"
    )
    pl.DataFrame({"item": range(60), "brand": [f"b{i % 5}" for i in range(60)]}).write_csv(
        tmp_path / "items.csv"
    )
    side = {
        "user": {"path": "users.csv", "key": "uid", "sparse": ["segment"]},
        "item": {"path": "items.csv", "key": "item", "sparse": ["brand"]},
    }
    raw = Table("log.csv", COLS, root=str(tmp_path), side_tables=side).load()
    ev = raw.events
    assert "brand" in raw.item_attributes and "segment" not in raw.item_attributes
    for u, seg in zip(ev["user_id"].to_list()[:50], ev["segment"].to_list()[:50], strict=True):
        assert seg == f"s{int(u) % 3}"


def test_clear_errors(tmp_path):
    df = _log()
    df.write_csv(tmp_path / "log.csv")
    with pytest.raises(MalformedDataError, match=r"no column \['visitor'\]"):
        Table("log.csv", {**COLS, "user": "visitor"}, root=str(tmp_path)).load()
    df.write_csv(tmp_path / "semi.csv", separator=";")
    with pytest.raises(MalformedDataError, match="separator is probably wrong"):
        Table("semi.csv", COLS, root=str(tmp_path)).load()
    with pytest.raises(MalformedDataError, match="values other than 0/1"):
        Table("log.csv", {**COLS, "label": "stars"}, root=str(tmp_path)).load()
    # one bad value among epoch seconds: named at its own line; only the bad labels listed
    rows = df.with_columns(pl.col("ts").cast(pl.String), pl.col("clicked").cast(pl.String))
    rows[50, "ts"] = "soon"
    rows[70, "clicked"] = "yes"
    rows.write_csv(tmp_path / "bad.csv")
    with pytest.raises(MalformedDataError, match=r"bad.csv:52: the time column 'ts'"):
        Table("bad.csv", COLS, root=str(tmp_path)).load()
    with pytest.raises(MalformedDataError, match=r"other than 0/1 \(e.g. \['yes'\]\)"):
        Table("bad.csv", {**COLS, "time": None, "label": "clicked"}, root=str(tmp_path)).load()
    with pytest.raises(DataNotFoundError, match="no file matches"):
        Table("nothing*.csv", COLS, root=str(tmp_path)).load()
    (tmp_path / "head.csv").write_text("uid,iid,ts\n")
    with pytest.raises(MalformedDataError, match="header but no rows"):
        Table("head.csv", {"user": "uid", "item": "iid"}, root=str(tmp_path)).load()
    (tmp_path / "bytes.csv").write_bytes(b"uid,iid\n1,2\n3,\xff\n")
    with pytest.raises(MalformedDataError, match=r"bytes.csv:3: .*0xff"):
        Table("bytes.csv", {"user": "uid", "item": "iid"}, root=str(tmp_path)).load()
    with pytest.raises(ConfigError, match="unknown roles"):
        Table("log.csv", {**COLS, "weather": "w"}, root=str(tmp_path))
    # a folder for a file (IsADirectoryError before), a format the table does not read
    with pytest.raises(ConfigError, match=r"is a folder .*give a file, or a glob"):
        Table(str(tmp_path), COLS).load()
    (tmp_path / "log.jsonl").write_text('{"uid": 1, "iid": 2}\n')
    with pytest.raises(ConfigError, match="reads CSV, TSV and Parquet, not .jsonl files"):
        Table("log.jsonl", COLS, root=str(tmp_path)).load()
    (tmp_path / "log.dat").write_bytes((tmp_path / "log.csv").read_bytes())
    assert Table("log.dat", COLS, root=str(tmp_path)).load().events.height == df.height


def _compose(tmp_path, *extra):
    cols = {"user": "uid", "item": "iid", "time": "ts", "sparse": "[hour,city]"}
    return table_config(tmp_path, None, None, *extra, columns=cols)


def test_yaml_only_table_prepares_with_context_kept_or_resampled(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    _log().write_csv(tmp_path / "log.csv")
    kept = prepare(_compose(tmp_path).dataset, log=lambda m: None)
    assert kept.info["rows"]["train"] > 0 and kept.info["label_rate"]["test"] == 0.5
    names = [f.name for f in kept.schema.fields]
    assert names[:4] == ["user_id", "item_id", "hour", "city"]
    test = kept.splits["test"]
    pos, neg = test["label"] == 1, test["label"] == 0
    # a negative sits beside its positive: same user and, when kept, the same context
    assert (test["sparse"][neg][:, 2:] == test["sparse"][pos][:, 2:]).all()
    drawn = prepare(
        _compose(tmp_path, "dataset.adapter.negative_context=resample").dataset, log=lambda m: None
    )
    t2 = drawn.splits["test"]
    same = (t2["sparse"][t2["label"] == 0][:, 2:] == t2["sparse"][t2["label"] == 1][:, 2:]).all(1)
    assert same.float().mean() < 0.5  # most negatives took another event's context


def test_too_few_events_for_every_split_is_a_clear_error(tmp_path, monkeypatch):
    """Three events under an 80/10/10 split leave validation empty: the run would otherwise
    stop deep in training, on a validation metric that never appeared."""
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    _log(n=3).write_csv(tmp_path / "log.csv")
    with pytest.raises(MalformedDataError, match="3 events leave the val split empty"):
        prepare(_compose(tmp_path).dataset, log=lambda m: None)
    # ten events fill every split: 8 / 1 / 1 positives, each beside a sampled negative
    _log(n=10).write_csv(tmp_path / "log.csv")
    data = prepare(_compose(tmp_path).dataset, log=lambda m: None)
    assert {s: int(len(t["label"])) for s, t in data.splits.items()} == {
        "train": 16,
        "val": 2,
        "test": 2,
    }


def test_a_rating_that_is_not_a_number_names_its_line_and_odd_numbers_are_missing(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    df = _log().with_columns(pl.col("stars").cast(pl.String), pl.col("price").cast(pl.String))
    stars = df["stars"].to_list()
    stars[41] = "x"
    df.with_columns(pl.Series("stars", stars)).write_csv(tmp_path / "bad.csv")
    cols = {**COLS, "rating": "stars", "rating_threshold": 4}
    with pytest.raises(
        MalformedDataError, match=r"bad.csv:43: the rating column 'stars' holds 'x'"
    ):
        Table("bad.csv", cols, root=str(tmp_path)).load()
    # NaN and inf are no ratings either: NaN >= 4 is false, so it used to be a silent label 0
    for value in ("nan", "inf"):
        stars[41] = value
        df.with_columns(pl.Series("stars", stars)).write_csv(tmp_path / "bad.csv")
        with pytest.raises(
            MalformedDataError, match=rf"bad.csv:43: the rating column 'stars' holds '?{value}"
        ):
            Table("bad.csv", cols, root=str(tmp_path)).load()
    # NaN, inf and text in a dense column are missing values (filled with the training mean
    # later), not NaN features that would turn the first loss into NaN
    price = df["price"].to_list()
    price[:3] = ["nan", "inf", "n/a"]
    df.with_columns(pl.Series("price", price)).write_csv(tmp_path / "log.csv")
    events = Table("log.csv", COLS, root=str(tmp_path)).load().events
    assert events["price"][:4].to_list()[:3] == [None, None, None]
    assert events["price"][3:].is_not_null().all()
    data = prepare(_compose(tmp_path, "dataset.adapter.columns.dense=[price]").dataset, log=print)
    assert all(torch.isfinite(t["dense"]).all() for t in data.splits.values())


def test_a_missing_value_in_a_bucketed_column_is_unknown_not_the_top_bucket(tmp_path, monkeypatch):
    """Empty cells, NaN, text and inf in a bucketed numeric column get the code a missing
    categorical value gets (OOV), not the bucket of the largest values; the others keep
    theirs."""
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    df = _log().with_columns(pl.col("price").cast(pl.String))
    price = df["price"].to_list()
    price[:6] = ["", "nan", "n/a", "inf", "", "nan"]
    df.with_columns(pl.Series("price", price)).write_csv(tmp_path / "log.csv")
    cfg = _compose(
        tmp_path, "dataset.adapter.columns.dense=[price]", "+dataset.features.buckets.price=4"
    )
    data = prepare(cfg.dataset, log=print)
    sparse = [f.name for f in data.schema.fields if f.kind == "sparse"]
    codes = np.concatenate(
        [t["sparse"][:, sparse.index("price")].numpy() for t in data.splits.values()]
    )
    per_event = len(codes) // 600  # each event and its sampled negative, which keeps its context
    assert (codes == 1).sum() == 6 * per_event  # OOV: the six missing prices
    assert set(np.unique(codes[codes != 1])) == {2, 3, 4, 5}  # four buckets of the rest


def test_a_column_of_words_declared_numeric_is_a_clear_error(tmp_path):
    """A few words in a numeric column are missing values; a column with no number at all was
    declared in the wrong list."""
    _log().write_csv(tmp_path / "log.csv")
    cols = {**COLS, "sparse": ["hour"], "dense": ["price", "city"]}
    with pytest.raises(ConfigError, match=r"'city' is listed in columns.dense but holds no number"):
        Table("log.csv", cols, root=str(tmp_path)).load()
    cols = {**COLS, "dense": ["price", "city"]}  # and in columns.sparse
    with pytest.raises(
        ConfigError, match=r"'city' is listed in columns.sparse and in columns.dense"
    ):
        Table("log.csv", cols, root=str(tmp_path)).load()


def test_ratings_without_a_threshold_serve_the_rating_task_and_ctr_is_told_why_not(
    tmp_path, monkeypatch
):
    """A user's table of ratings needs no click threshold for task=rating (or top-K and
    next-item, which read the events): it used to be refused for a missing rating_threshold. CTR,
    which learns the click label, is refused by the config check with the way out."""
    from recbench.tasks.rating import RatingTask
    from recbench.validate import check

    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    df = _log()
    df.write_csv(tmp_path / "log.csv")
    rated = Table("log.csv", {**COLS, "rating": "stars"}, root=str(tmp_path)).load()
    assert rated.events["label"].null_count() == df.height and not rated.implicit
    assert rated.events["rating"].to_list() == df["stars"].cast(pl.Float64).to_list()
    cols = ["dataset.adapter.columns.rating=stars", f"paths.run_dir={tmp_path / 'r'}"]
    cfg = _compose(tmp_path, "task=rating", "model=mf", *cols)
    check(cfg, "train")  # no problem
    data = RatingTask.prepare(cfg, log=lambda _: None)
    assert data.info["rows"]["train"] > 0
    assert prepare(cfg.dataset, log=lambda _: None).info["label_rate"]["test"] is None  # data info
    with pytest.raises(ConfigError, match="without rating_threshold gives no click label"):
        check(_compose(tmp_path, "model=lr", *cols), "train")


def test_ids_and_categories_are_read_as_text_so_leading_zeros_stay_distinct(tmp_path):
    """Zero-padded ids (SKUs, account numbers) look like numbers: read as numbers, "007", "07"
    and "7" were one user and the side table's key "01" matched item "1"."""
    log = "uid,iid,ts,zip\n007,01,1,02139\n07,1,2,2139\n7,001,3,02139\n"
    (tmp_path / "log.csv").write_text(log)
    (tmp_path / "items.csv").write_text("key,shelf\n01,a\n1,b\n001,c\n")
    cols = {"user": "uid", "item": "iid", "time": "ts", "sparse": ["zip"]}
    side = {"item": {"path": "items.csv", "key": "key", "sparse": ["shelf"]}}
    events = Table("log.csv", cols, root=str(tmp_path), side_tables=side).load().events
    assert events["user_id"].to_list() == ["007", "07", "7"]
    assert events["item_id"].to_list() == ["01", "1", "001"]
    assert events["zip"].to_list() == ["02139", "2139", "02139"]
    assert events["shelf"].to_list() == ["a", "b", "c"]
    (tmp_path / "bare.csv").write_text("007,01\n7,1\n")  # without a header alike
    bare = Table(
        "bare.csv", {"user": "column_1", "item": "column_2"}, root=str(tmp_path), has_header=False
    ).load()
    assert bare.events["user_id"].to_list() == ["007", "7"]
    assert bare.events["item_id"].to_list() == ["01", "1"]


def test_iso_times_with_a_utc_offset_are_the_instants_they_name(tmp_path):
    """2024-05-01T10:00:00Z and +02:00 are ISO dates: they were refused as 'not a number or a
    date'. A column mixing dates with and without an offset is refused with the line and the
    value."""
    cols = {"user": "u", "item": "i", "time": "t"}
    rows = ["2020-10-05T10:00:00Z", "2020-10-05T11:00:00+02:00", "2020-10-05T09:30:00.5Z"]
    lines = "".join(f"a,{k},{t}\n" for k, t in enumerate(rows))
    (tmp_path / "tz.csv").write_text("u,i,t\n" + lines)
    times = Table("tz.csv", cols, root=str(tmp_path)).load().events["timestamp"].to_list()
    ten = 1601892000  # 2020-10-05T10:00:00Z
    assert times == [ten, ten - 3600, ten - 1800]
    (tmp_path / "naive.csv").write_text("u,i,t\na,1,2020-10-05T10:00:00\na,2,2020-10-05\n")
    naive = Table("naive.csv", cols, root=str(tmp_path)).load().events["timestamp"].to_list()
    assert naive == [ten, ten - 36000]  # without an offset: UTC, as before
    (tmp_path / "mix.csv").write_text("u,i,t\na,1,2020-10-05\n\na,2,2020-10-05T10:00:00Z\n")
    with pytest.raises(
        MalformedDataError,
        match=r"mix\.csv:4: the time column 't' is not epoch seconds or an ISO date .* "
        r"\('2020-10-05T10:00:00Z'\)",
    ):
        Table("mix.csv", cols, root=str(tmp_path)).load()


def test_an_empty_label_cell_is_refused_with_its_line(tmp_path):
    """An empty label was a null label: not a positive for top-K and next-item, a NaN target
    for CTR."""
    (tmp_path / "log.csv").write_text("u,i,clicked\na,1,1\na,2,\nb,1,0\n")
    cols = {"user": "u", "item": "i", "label": "clicked"}
    with pytest.raises(MalformedDataError, match=r"log\.csv:3: the label column 'clicked' is emp"):
        Table("log.csv", cols, root=str(tmp_path)).load()


def test_files_of_one_name_in_several_folders_each_enter_the_cache_key(tmp_path, monkeypatch):
    """A glob over partition folders (day=1/part-0.csv, day=2/part-0.csv): the key held one
    digest per file name, the last folder's, so editing an earlier partition reused the stale
    prepared data."""
    from hydra.utils import instantiate

    from recbench.data.pipeline import cache_key
    from recbench.data.sequences import sequence_key

    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    for day in (1, 2):
        (tmp_path / f"day={day}").mkdir()
        _log(n=50, seed=day).write_csv(tmp_path / f"day={day}" / "part-0.csv")
    extra = ["dataset.adapter.path=*/part-0.csv", "task=next_item", "model=sasrec"]
    cfg = _compose(tmp_path, *extra)

    def keys():
        return cache_key(cfg.dataset, instantiate(cfg.dataset.adapter)), sequence_key(cfg)[0]

    before = keys()
    _log(n=40, seed=1).write_csv(tmp_path / "day=1" / "part-0.csv")
    after = keys()
    assert before[0] != after[0] and before[1] != after[1]
