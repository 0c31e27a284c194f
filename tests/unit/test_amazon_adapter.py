"""The Amazon adapter reads S3-Rec's sequence and attribute files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from recbench.data.adapters.amazon import AmazonS3Rec
from recbench.errors import ConfigError, DataNotFoundError, MalformedDataError

SEQUENCES = "1 10 11 12\n2 11 13\n3 14 10 10 15\n"
ATTRIBUTES = {"10": [1, 2], "11": [3], "12": [2, 4, 5], "14": [6]}  # 13 and 15 have none


def write(folder: Path, sequences: str = SEQUENCES, attributes: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Beauty.txt").write_text(sequences)
    text = json.dumps(ATTRIBUTES) if attributes is None else attributes
    (folder / "Beauty_item2attributes.json").write_text(text)
    return folder


def test_reads_one_event_per_item_with_its_position_and_categories(tmp_path):
    raw = AmazonS3Rec("Beauty", root=str(write(tmp_path))).load()
    events = raw.events
    assert events.schema == {
        "user_id": pl.Int64,
        "item_id": pl.Int64,
        "timestamp": pl.Int64,
        "label": pl.Int64,
        "categories": pl.List(pl.Int64),
    }
    assert events["user_id"].to_list() == [1, 1, 1, 2, 2, 3, 3, 3, 3]
    assert events["item_id"].to_list() == [10, 11, 12, 11, 13, 14, 10, 10, 15]  # ids as written
    assert events["timestamp"].to_list() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert events["label"].to_list() == [1] * 9
    cats = events["categories"].to_list()
    assert cats == [[1, 2], [3], [2, 4, 5], [3], [], [6], [1, 2], [1, 2], []]
    assert raw.implicit and raw.multi == ("categories",) and raw.item_attributes == ("categories",)
    assert [p.name for p in raw.files] == ["Beauty.txt", "Beauty_item2attributes.json"]


def test_finds_the_files_under_the_data_dir(tmp_path, monkeypatch):
    write(tmp_path / "amazon-seq-s3rec")
    monkeypatch.setenv("RECBENCH_DATA_DIR", str(tmp_path))
    assert AmazonS3Rec("Beauty").load().events.height == 9


def test_a_non_integer_token_names_file_and_line(tmp_path):
    root = write(tmp_path, sequences="1 10 11\n2 11 x13\n")
    with pytest.raises(MalformedDataError, match=r"Beauty\.txt:2: token 'x13'"):
        AmazonS3Rec("Beauty", root=str(root)).load()


def test_a_user_line_twice_or_without_items_is_malformed(tmp_path):
    root = write(tmp_path, sequences="1 10 11\n\n1 12\n")
    with pytest.raises(MalformedDataError, match=r"Beauty\.txt:3: user 1 already has a line"):
        AmazonS3Rec("Beauty", root=str(root)).load()
    root = write(tmp_path, sequences="1 10 11\n2\n")
    with pytest.raises(MalformedDataError, match=r"Beauty\.txt:2: user 2 has no items"):
        AmazonS3Rec("Beauty", root=str(root)).load()


def test_a_broken_attribute_file_names_file_and_line(tmp_path):
    root = write(tmp_path, attributes='{"10": [1, 2],\n "11": [3, "brand"]}')
    with pytest.raises(MalformedDataError, match=r"item2attributes\.json:2: item 11"):
        AmazonS3Rec("Beauty", root=str(root)).load()
    root = write(tmp_path, attributes='{"10": [1, 2],\n "11": [3,}')
    with pytest.raises(MalformedDataError, match=r"item2attributes\.json:2: not valid JSON"):
        AmazonS3Rec("Beauty", root=str(root)).load()


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as err:
        AmazonS3Rec("Toys_and_Games").load()
    message = str(err.value)
    assert "Toys_and_Games.txt" in message
    assert str(tmp_path / "amazon-seq-s3rec") in message and "dataset.root" in message
    with pytest.raises(DataNotFoundError, match="dataset.root="):
        AmazonS3Rec("Beauty", root=str(tmp_path / "nowhere")).load()


def test_any_s3rec_style_file_reads_and_attributes_are_optional(tmp_path):
    (tmp_path / "Yelp.txt").write_text(SEQUENCES)
    raw = AmazonS3Rec("Yelp", root=str(tmp_path)).load()
    assert raw.events.height == 9 and raw.events["categories"].list.len().sum() == 0
    assert [p.name for p in raw.files] == ["Yelp.txt"]
    (tmp_path / "Yelp_item2attributes.json").write_text(json.dumps(ATTRIBUTES))
    with_attrs = AmazonS3Rec("Yelp", root=str(tmp_path)).load()
    assert with_attrs.events["categories"].list.len().sum() > 0
    with pytest.raises(ConfigError, match="stem"):
        AmazonS3Rec("Books.txt")


def real_beauty() -> Path:
    if not os.environ.get("RECBENCH_DATA_DIR"):
        pytest.skip("RECBENCH_DATA_DIR is unset; point it at the folder holding amazon-seq-s3rec/")
    folder = Path(os.environ["RECBENCH_DATA_DIR"]) / "amazon-seq-s3rec"
    if not (folder / "Beauty.txt").exists():
        pytest.skip(f"{folder / 'Beauty.txt'} is absent")
    return folder


@pytest.mark.data
def test_real_beauty_matches_the_s3rec_paper_counts():
    events = AmazonS3Rec("Beauty", root=str(real_beauty())).load().events
    assert events["user_id"].n_unique() == 22_363  # S3-Rec (CIKM 2020) Table 1
    assert events.height == 198_502
    assert events["item_id"].n_unique() == 12_101
    assert events["categories"].list.len().min() >= 1  # every Beauty item has attributes
    first = events.group_by("user_id").agg(pl.col("timestamp").min(), pl.len())
    assert (first["timestamp"] == 0).all() and first["len"].min() >= 5  # 5-core
