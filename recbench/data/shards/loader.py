"""The block-shuffling loader over one split's memory-mapped shards."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from recbench.data.loader import EpochBatching
from recbench.data.shards.read import ShardSplit


class ShardLoader(EpochBatching):
    """Batches of a ``ShardSplit`` read by memory map, a block at a time.

    Training (``shuffle=True``): the blocks are permuted by a generator seeded by
    ``(seed, epoch)``, the same on every rank; rank ``r`` of ``w`` reads blocks ``r::w`` of that
    order (disjoint blocks). ``buffer_blocks`` blocks at a time fill a buffer whose rows are
    permuted (generator ``(seed, epoch, rank)``) and served in batches; the rest carries into
    the next fill. Every rank serves the most rows a rank can draw (the same in every epoch),
    re-reading the start of its own blocks to make up the difference, so all ranks run the same
    number of steps in every epoch (as DDP needs). Memory: one buffer.
    Evaluation (``shuffle=False``): rank ``r`` reads blocks ``r::w`` in row order, unpadded, so
    over all ranks every row is seen exactly once; a rank left without rows yields one batch of
    zero rows (see ``BatchLoader``).
    """

    def __init__(
        self,
        split: ShardSplit,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        before_epoch: Callable[[int], None] | None = None,
    ) -> None:
        self.split = split
        self._init_batching(
            split.n, batch_size, shuffle, seed, drop_last, rank, world_size, before_epoch
        )
        self._blocks = split.blocks()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _order(self, epoch: int) -> list[tuple[int, int, int]]:
        blocks = self._blocks
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(blocks))
            blocks = [blocks[i] for i in perm]
        return blocks

    def _share(self, blocks: list, rank: int) -> int:
        return sum(b - a for _, a, b in blocks[rank :: self.world_size])

    def rows_per_rank(self) -> int:
        if self.shuffle:
            return self._padded_share()
        return self._share(self._order(self.epoch), self.rank)

    def _padded_share(self) -> int:
        """What every training rank serves, in every epoch: the most rows any rank can draw (its
        share of blocks, the largest ones). The largest share of one epoch's order would change
        with the order, and Lightning reads a loader's length once, for every epoch."""
        sizes = sorted((b - a for _, a, b in self._blocks), reverse=True)
        return sum(sizes[: math.ceil(len(sizes) / self.world_size)])

    def empty_rank(self) -> bool:
        return not self.shuffle and self.world_size > 1 and self.rows_per_rank() == 0

    def __len__(self) -> int:
        if self.empty_rank():
            return 1
        rows = self.rows_per_rank()
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def rank_blocks(self, epoch: int) -> list[tuple[int, int, int]]:
        """This rank's blocks for ``epoch``, padded (training) to ``_padded_share``."""
        order = self._order(epoch)
        mine = order[self.rank :: self.world_size]
        if not self.shuffle or not order:
            return mine
        missing = self._padded_share() - self._share(order, self.rank)
        source = mine or order  # a rank left without blocks (more ranks than blocks) reads others'
        padded = list(mine)
        i = 0
        while missing > 0:
            s, a, b = source[i % len(source)]
            take = min(b - a, missing)
            padded.append((s, a, a + take))
            missing -= take
            i += 1
        return padded

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.before_epoch is not None:
            self.before_epoch(self.epoch)
        epoch = self.epoch
        self.epoch += 1
        if self.empty_rank():
            empty = self.split.read_block((0, 0, 0)) if self.split.sizes else {}
            yield {k: torch.from_numpy(v) for k, v in empty.items()}
            return
        blocks = self.rank_blocks(epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        bs = self.batch_size
        carry: dict[str, np.ndarray] | None = None
        step = self.split.buffer_blocks if self.shuffle else 1
        for i in range(0, len(blocks), step):
            parts = [self.split.read_block(b) for b in blocks[i : i + step]]
            if carry is not None:
                parts.insert(0, carry)
            chunk = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            n = len(chunk["label"]) if "label" in chunk else len(next(iter(chunk.values())))
            if self.shuffle:
                perm = rng.permutation(n)
                chunk = {k: v[perm] for k, v in chunk.items()}
            last = i + step >= len(blocks)
            full = n if last else n - n % bs
            for a in range(0, full, bs):
                b = min(a + bs, full)
                if self.drop_last and b - a < bs:
                    break
                yield {k: torch.from_numpy(v[a:b]) for k, v in chunk.items()}
            carry = None if last or full == n else {k: v[full:] for k, v in chunk.items()}
