"""Out-of-core preparation and loading: memory-mapped column shards.

Preparation streams the raw files twice, a bounded chunk at a time (``Criteo.chunks``):

1. *fit*: each row's split from a hash of ``(split.seed, row number)`` (random, ``split.ratios``),
   then, over training rows only, the count of every categorical value (vocabularies keep values
   seen ``features.min_count`` times; ``features.hash_buckets > 0`` hashes values into that many
   rows per field instead and skips counting) and the sums that standardise the dense columns;
2. *write*: each row encoded and appended to its split's shard buffer; a full buffer becomes one
   shard: one ``.npy`` per batch-layout column (``sparse`` (n, F) int32, ``dense`` (n, D)
   float32, ``label`` (n,) float32, ``oracle`` where known).

Everything is written into a temporary folder renamed into place at the end (``shards.json``
last), so a reader never sees a half-written cache. Memory stays bounded by the chunk size, the
vocabularies and one shard buffer per split, whatever the number of rows.

Serving: ``dataset.storage=shards`` opens every shard with ``np.load(mmap_mode="r")`` and
``ShardLoader`` reads them block by block; ``dataset.storage=memory`` concatenates the shards
into the usual contiguous tensors for ``BatchLoader``. Both give batches of the same layout.

- ``encode``: a row's split, categorical codes and dense transform;
- ``write``: the two streamed passes and the shard writer;
- ``read``: memory-mapped columns, splits and the prepared data over them;
- ``loader``: ``ShardLoader``, the block-shuffling loader;
- ``prepare``: options, the cache key and the locked build of the cache.
"""

from recbench.data.shards.encode import (
    DENSE_TRANSFORMS,
    dense_transform,
    hash_codes,
    mix64,
    split_of_rows,
)
from recbench.data.shards.loader import ShardLoader
from recbench.data.shards.prepare import (
    STORAGES,
    prepare_shards,
    prepare_streamed,
    storage_of,
    streamed_key,
)
from recbench.data.shards.read import META, SHARDS_VERSION, ShardColumn, ShardedData, ShardSplit
from recbench.data.shards.write import _ShardWriter as _ShardWriter
from recbench.data.shards.write import write_shards

__all__ = [
    "DENSE_TRANSFORMS",
    "META",
    "SHARDS_VERSION",
    "STORAGES",
    "ShardColumn",
    "ShardLoader",
    "ShardSplit",
    "ShardedData",
    "dense_transform",
    "hash_codes",
    "mix64",
    "prepare_shards",
    "prepare_streamed",
    "split_of_rows",
    "storage_of",
    "streamed_key",
    "write_shards",
]
