"""Amazon review sequences as prepared by S3-Rec (Zhou et al., CIKM 2020): Beauty, Toys_and_Games,
Sports_and_Outdoors (5-core, from McAuley et al.'s 2014 Amazon dumps).

``<name>.txt`` holds one user per line, ``user_id item_1 item_2 ...`` with the items in time
order and no timestamps; ``<name>_item2attributes.json`` maps each item id (a string key) to its
attribute ids (category path tokens and brand), used as the item's ``categories``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from recbench.data.adapters.base import RawData, find_root, malformed, read_text
from recbench.errors import ConfigError

# the categories of the S3-Rec paper's tables; any other S3-Rec-style file works the same way
CATEGORIES = ("Beauty", "Toys_and_Games", "Sports_and_Outdoors")


class AmazonS3Rec:
    """A sequence file in the S3-Rec layout as implicit feedback: every event is a click.

    ``<name>.txt`` holds one user a line, ``user item item ...`` in time order; the optional
    ``<name>_item2attributes.json`` maps item ids to attribute ids, the item's ``categories``
    (empty where the item has none, or everywhere when the file is absent). ``name`` is any such
    file's stem (``Beauty``, ``Toys_and_Games``, ``Sports_and_Outdoors`` are the S3-Rec paper's;
    ``Yelp`` or ``LastFM`` of the same preparation work too); the dataset's name is
    ``amazon-<name in lower case>``. ``timestamp`` is the event's position in the user's
    sequence, since the files keep only the order. Read as UTF-8 unless ``encoding`` says other.
    """

    subdir = "amazon-seq-s3rec"

    def __init__(self, name: str, root: str | None = None, encoding: str | None = None) -> None:
        if not name or "/" in name or name.endswith(".txt"):
            raise ConfigError(
                f"dataset.adapter.name={name!r}: give the sequence file's stem, e.g. Beauty for "
                "Beauty.txt (the S3-Rec categories are " + ", ".join(CATEGORIES) + ")"
            )
        self.category = name
        self.name = f"amazon-{name.lower()}"
        self.root = root
        self.encoding = encoding or "utf8"

    def files(self) -> tuple[Path, ...]:
        sequences = f"{self.category}.txt"
        root = find_root(self.name, self.root, self.subdir, required=(sequences,))
        attributes = root / f"{self.category}_item2attributes.json"
        return (root / sequences, attributes) if attributes.exists() else (root / sequences,)

    def load(self) -> RawData:
        files = self.files()
        users, items, positions = _read_sequences(files[0], self.encoding)
        categories = _read_attributes(files[1], self.encoding) if len(files) > 1 else {}
        events = pl.DataFrame(
            {
                "user_id": users,
                "item_id": items,
                "timestamp": positions,
                "label": np.ones(len(items), dtype=np.int64),
            }
        )
        table = pl.DataFrame(
            {"item_id": list(categories), "categories": list(categories.values())},
            schema={"item_id": pl.Int64, "categories": pl.List(pl.Int64)},
        )
        events = events.join(table, on="item_id", how="left", maintain_order="left")
        events = events.with_columns(pl.col("categories").fill_null(pl.lit([], pl.List(pl.Int64))))
        return RawData(
            events=events,
            multi=("categories",),
            item_attributes=("categories",),
            files=files,
            implicit=True,
        )


def _read_sequences(
    path: Path, encoding: str = "utf8"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users, items and positions (int64 arrays, one entry per event) of a sequence file."""
    users: list[int] = []
    items: list[int] = []
    positions: list[int] = []
    first_line: dict[int, int] = {}
    # read_text: an empty file, or a byte the encoding rejects, is named with its line
    for line_no, line in enumerate(read_text(path, encoding).splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            ids = [int(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_int(t))
            raise malformed(path, line_no, f"token {bad!r} is not an integer id") from None
        user, seq = ids[0], ids[1:]
        if not seq:
            raise malformed(path, line_no, f"user {user} has no items")
        if user in first_line:
            raise malformed(
                path, line_no, f"user {user} already has a line (line {first_line[user]})"
            )
        first_line[user] = line_no
        users.extend([user] * len(seq))
        items.extend(seq)
        positions.extend(range(len(seq)))
    return (
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(positions, dtype=np.int64),
    )


def _read_attributes(path: Path, encoding: str = "utf8") -> dict[int, list[int]]:
    """``{item id: [attribute ids]}`` from the JSON attribute map."""
    text = read_text(path, encoding)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise malformed(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise malformed(path, 1, "expected a JSON object mapping item ids to attribute lists")
    out: dict[int, list[int]] = {}
    for key, values in raw.items():
        if not _is_int(key):
            raise malformed(path, _line_of(text, key), f"item key {key!r} is not an integer id")
        if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            raise malformed(
                path, _line_of(text, key), f"item {key}: attributes must be a list of integers"
            )
        out[int(key)] = values
    return out


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _line_of(text: str, key: str) -> int:
    """1-based line of the first occurrence of ``"key"`` in a JSON text (1 if not found)."""
    at = text.find(json.dumps(key))
    return text.count("\n", 0, at) + 1 if at >= 0 else 1
