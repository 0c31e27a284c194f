"""Whole-batch loading by index over contiguous tensors.

A batch is one gather per tensor (``t[idx]``), or a slice when the order is sequential — no
per-row ``__getitem__`` and no Python collate. The tensors may live on the accelerator
(``device_resident``), in which case a batch never crosses the PCIe bus.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor


class EpochBatching:
    """What every recbench loader takes and checks alike: rows, batch size, shuffling by a
    ``(seed, epoch)`` generator, the DDP rank's share, and an optional hook run before each
    pass. ``set_epoch`` is what Lightning's fit loop calls on a loader."""

    def _init_batching(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int,
        world_size: int,
        before_epoch: Callable[[int], None] | None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.before_epoch = before_epoch  # called with the epoch number before each pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class BatchLoader(EpochBatching):
    """Batches of ``tensors`` (all with the same first dimension).

    Training (``shuffle=True``): every epoch draws one permutation from a generator seeded by
    ``(seed, epoch)``, identical on every rank; rank ``r`` of ``w`` takes positions ``r::w`` of it,
    padded by wrapping so all ranks run the same number of steps (as DDP needs).
    ``before_epoch(epoch)``, when given, runs before each pass (e.g. to redraw negatives).
    Evaluation (``shuffle=False``): rank ``r`` takes rows ``r::w`` of the natural order, without
    padding, so over all ranks every row is seen exactly once. A rank left without rows (fewer
    rows than ranks) yields one batch of zero rows: the evaluation's gather is a collective
    every rank must join, and a rank that ran no step would not reach it with the others.
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        before_epoch: Callable[[int], None] | None = None,
    ) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(
                f"tensors differ in length: { {k: len(t) for k, t in tensors.items()} }"
            )
        self.tensors = dict(tensors)
        n = lengths.pop()
        self._init_batching(n, batch_size, shuffle, seed, drop_last, rank, world_size, before_epoch)

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def rows_per_rank(self) -> int:
        if self.shuffle:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def empty_rank(self) -> bool:
        """An evaluation rank without rows under DDP: it yields one zero-row batch."""
        return not self.shuffle and self.world_size > 1 and self.rows_per_rank() == 0

    def __len__(self) -> int:
        if self.empty_rank():
            return 1
        rows = self.rows_per_rank()
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def indices(self) -> Tensor | None:
        """This rank's row order for the current epoch; None means 0..n-1 in order."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g)
            if self.world_size > 1:
                total = self.rows_per_rank() * self.world_size
                perm = torch.cat([perm, perm[: total - self.n]])[self.rank :: self.world_size]
            return perm.to(self.device)
        if self.world_size > 1:
            return torch.arange(min(self.rank, self.n), self.n, self.world_size, device=self.device)
        return None

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.before_epoch is not None:
            self.before_epoch(self.epoch)
        idx = self.indices()
        self.epoch += 1  # the next pass draws a new permutation
        if self.empty_rank():
            yield {k: t[:0] for k, t in self.tensors.items()}
            return
        rows = self.n if idx is None else len(idx)
        bs = self.batch_size
        stop = rows - rows % bs if self.drop_last else rows
        for start in range(0, stop, bs):
            end = min(start + bs, rows)
            if idx is None:
                yield {k: t[start:end] for k, t in self.tensors.items()}  # views, no copy
            else:
                sel = idx[start:end]
                yield {k: t[sel] for k, t in self.tensors.items()}
