"""MovieLens adapters on small files written in the official formats, and on the real 100K."""

import numpy as np
import polars as pl
import pytest

from recbench.data.adapters.movielens import MovieLens1M, MovieLens100K, MovieLensCSV
from recbench.errors import DataNotFoundError, MalformedDataError


def write_100k(root, extra_data_line=None):
    root.mkdir(parents=True, exist_ok=True)
    data = ["1\t10\t5\t100", "1\t11\t3\t101", "2\t10\t4\t100", "2\t12\t2\t105"]
    if extra_data_line:
        data.insert(2, extra_data_line)
    (root / "u.data").write_text("\n".join(data) + "\n")
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = lambda on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    (root / "u.item").write_bytes(
        (
            f"10|Caf\xe9 (1995)|01-Jan-1995||http://x|{flags({1, 3})}\n"
            f"11|B (1995)|01-Jan-1995||http://x|{flags({5})}\n"
            f"12|C (1995)|01-Jan-1995||http://x|{flags(set())}\n"
        ).encode("latin-1")
    )
    return root


def test_100k_fields_and_label(tmp_path):
    raw = MovieLens100K(root=str(write_100k(tmp_path / "ml"))).load()
    ev = raw.events.sort("user_id", "item_id")
    assert ev["label"].to_list() == [1, 0, 1, 0]  # rating >= 4
    assert ev.filter(pl.col("item_id") == 10)["genres"].to_list()[0] == [1, 3]
    assert ev.filter(pl.col("item_id") == 12)["genres"].to_list()[0] == []
    assert set(raw.sparse) == {"age", "gender", "occupation", "zip"}
    assert raw.item_attributes == ("genres",)
    raw3 = MovieLens100K(root=str(tmp_path / "ml"), label_threshold=3).load()
    assert raw3.events["label"].sum() == 3


def test_malformed_line_names_file_and_line(tmp_path):
    root = write_100k(tmp_path / "ml", extra_data_line="3\tten\t4\t100")
    with pytest.raises(MalformedDataError, match=r"u\.data:3: field 'item_id' is not an integer"):
        MovieLens100K(root=str(root)).load()
    (root / "u.data").write_text("1\t10\t5\t100\n1\t11\n")
    with pytest.raises(MalformedDataError, match=r"u\.data:2: expected 4"):
        MovieLens100K(root=str(root)).load()


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="dataset.root=.*does not hold u.data"):
        MovieLens100K(root=str(tmp_path)).load()
    monkeypatch.setenv("RECBENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="RECBENCH_DATA_DIR"):
        MovieLens100K().load()


def test_1m_format(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::11::2::978302109\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n")
    (tmp_path / "movies.dat").write_bytes(
        "10::Toy Story (1995)::Animation|Children's|Comedy\n11::Caf\xe9 (1995)::Drama\n".encode(
            "latin-1"
        )
    )
    raw = MovieLens1M(root=str(tmp_path)).load()
    ev = raw.events.sort("item_id")
    assert ev["label"].to_list() == [1, 0]
    assert ev["genres"].to_list() == [["Animation", "Children's", "Comedy"], ["Drama"]]
    assert ev["gender"].to_list() == ["F", "F"]


def test_csv_layout_with_headers(tmp_path):
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n'
        "3,Grumpier Old Men (1995),(no genres listed)\n"
    )
    raw = MovieLensCSV(root=str(tmp_path)).load()
    ev = raw.events.sort("item_id")
    assert ev["label"].to_list() == [1, 0]
    assert ev["genres"].to_list() == [["Adventure", "Animation"], []]
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,x,4.0,9\n")
    with pytest.raises(MalformedDataError, match=r"ratings\.csv:2: field 'movieId'"):
        MovieLensCSV(root=str(tmp_path)).load()


@pytest.mark.data
def test_real_100k_counts(ml100k):
    raw = MovieLens100K(root=str(ml100k)).load()
    assert raw.events.height == 100_000
    assert raw.events["user_id"].n_unique() == 943
    assert raw.events["item_id"].n_unique() == 1682
    assert raw.events["label"].mean() == pytest.approx(0.55375)
    assert not raw.events["genres"].is_null().any()
    assert np.all(raw.events["age"].to_numpy() > 0)
