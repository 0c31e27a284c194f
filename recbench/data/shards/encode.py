"""What a raw row becomes: its split (a hash of the row number), the codes of its categorical
values (a vocabulary from streamed counts, or hashed buckets) and its transformed dense counts."""

from __future__ import annotations

import numpy as np

from recbench.data.schema import OOV

DENSE_TRANSFORMS = ("log1p", "log_squared")


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a fixed, platform-independent 64-bit hash of ``x``."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def split_of_rows(rows: np.ndarray, seed: int, ratios: list[float]) -> np.ndarray:
    """0/1/2 (train/val/test) for global row numbers ``rows``: the same row always lands in the
    same split for one seed, whatever the chunking."""
    with np.errstate(over="ignore"):
        key = rows.astype(np.uint64) + np.uint64(seed % (1 << 32)) * np.uint64(0x9E3779B97F4A7C15)
    u = (mix64(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    total = float(sum(ratios))
    edges = np.cumsum(ratios)[:-1] / total
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def hash_codes(values: np.ndarray, field_index: int, buckets: int) -> np.ndarray:
    """Codes 2..buckets+1 of categorical ``values`` hashed per field."""
    with np.errstate(over="ignore"):
        key = values.astype(np.int64).view(np.uint64) ^ (
            np.uint64(field_index + 1) * np.uint64(0x9E3779B97F4A7C15)
        )
    return (mix64(key) % np.uint64(buckets)).astype(np.int32) + 2


def dense_transform(x: np.ndarray, kind: str) -> np.ndarray:
    """The raw integer counts as float64, NaN where missing.

    ``log1p``: log(1 + max(x, 0)). ``log_squared``: floor(log(x)²) for x > 2, x otherwise (the
    transform of the Criteo challenge's winning entry, which then treated the result as a
    category). Either is standardised afterwards with training-split statistics.
    """
    if kind == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    safe = np.where(x > 2, x, 3.0)
    return np.where(x > 2, np.floor(np.log(safe) ** 2), x)


class _Counts:
    """Streamed value counts of one field: sorted unique values and their counts."""

    def __init__(self) -> None:
        self.values = np.empty(0, np.int64)
        self.counts = np.empty(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_size = 0

    def add(self, values: np.ndarray) -> None:
        v, c = np.unique(values, return_counts=True)
        self.pending.append((v, c))
        self.pending_size += len(v)
        if self.pending_size > max(len(self.values), 1 << 18):
            self._merge()

    def _merge(self) -> None:
        if not self.pending:
            return
        vals = np.concatenate([self.values, *(v for v, _ in self.pending)])
        cnts = np.concatenate([self.counts, *(c for _, c in self.pending)])
        self.values, inverse = np.unique(vals, return_inverse=True)
        self.counts = np.bincount(inverse, weights=cnts).astype(np.int64)
        self.pending, self.pending_size = [], 0

    def vocabulary(self, min_count: int) -> np.ndarray:
        self._merge()
        return self.values[self.counts >= min_count]


def _encode(values: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """Codes 2.. of ``values`` in the sorted ``vocab``; OOV where absent."""
    if not len(vocab):
        return np.full(len(values), OOV, np.int32)
    pos = np.searchsorted(vocab, values).clip(max=len(vocab) - 1)
    return np.where(vocab[pos] == values, pos + 2, OOV).astype(np.int32)
