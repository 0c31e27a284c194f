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
    the next fill. A rank with fewer rows than the largest share re-reads the start of its own
    blocks, so all ranks run the same number of steps (as DDP needs). Memory: one buffer.
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
        blocks = self._order(self.epoch)
        if self.shuffle:  # the largest share: the block sizes are the same in every order
            return max(self._share(blocks, r) for r in range(self.world_size))
        return self._share(blocks, self.rank)

    def empty_rank(self) -> bool:
        return not self.shuffle and self.world_size > 1 and self.rows_per_rank() == 0

    def __len__(self) -> int:
        if self.empty_rank():
            return 1
        rows = self.rows_per_rank()
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def rank_blocks(self, epoch: int) -> list[tuple[int, int, int]]:
        """This rank's blocks for ``epoch``, padded (training) to the largest share."""
        order = self._order(epoch)
        mine = order[self.rank :: self.world_size]
        if not self.shuffle or not mine:
            return mine
        missing = max(self._share(order, r) for r in range(self.world_size)) - self._share(
            order, self.rank
        )
        padded = list(mine)
        i = 0
        while missing > 0:
            s, a, b = mine[i % len(mine)]
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
