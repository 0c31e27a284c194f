"""Column encodings the feature pipeline fits on the training split and applies to every split:
vocabularies of categorical values (``OOV`` for unseen or rare ones, ``PAD`` 0), right-padded
codes of list columns, and quantile buckets of numeric ones."""

from __future__ import annotations

import numpy as np
import polars as pl

from recbench.data.schema import OOV


def fit_vocab(values: pl.Series, min_count: int) -> pl.Series:
    counts = values.value_counts()
    return counts.filter(pl.col("count") >= min_count)[values.name].sort()


def encode(values: pl.Series, vocab: pl.Series) -> np.ndarray:
    codes = pl.int_range(2, len(vocab) + 2, eager=True, dtype=pl.Int32)
    out = values.cast(vocab.dtype, strict=False).replace_strict(
        vocab, codes, default=OOV, return_dtype=pl.Int32
    )
    return out.fill_null(OOV).to_numpy()


def encode_lists(values: pl.Series, vocab: pl.Series, width: int) -> np.ndarray:
    """Right-padded (N, width) codes of a list column."""
    frame = pl.DataFrame({"v": values.list.head(width)}).with_row_index("r")
    flat = frame.explode("v").drop_nulls("v")
    flat = flat.with_columns(pl.int_range(pl.len()).over("r").alias("p"))
    out = np.zeros((len(values), width), dtype=np.int32)
    if flat.height:
        out[flat["r"].to_numpy(), flat["p"].to_numpy()] = encode(flat["v"], vocab)
    return out


def bucket_codes(values: pl.Series, edges: np.ndarray) -> np.ndarray:
    """Codes of a bucketed numeric column: 2 + the bucket of each value, ``OOV`` for a
    missing one (as a missing categorical value), never the top bucket NaN would sort into."""
    v = values.cast(pl.Float64).to_numpy()
    codes = np.searchsorted(edges, v, side="right").astype(np.int32) + 2
    codes[np.isnan(v)] = OOV
    return codes


def quantile_edges(values: pl.Series, n: int) -> np.ndarray:
    qs = np.linspace(0, 1, n + 1)[1:-1]
    v = values.drop_nulls().to_numpy()
    return np.unique(np.quantile(v, qs)) if len(v) else np.array([])
