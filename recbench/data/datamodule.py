"""Lightning glue: the prepared tensors served by ``BatchLoader``s, sharded by rank."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from recbench.data.loader import BatchLoader
from recbench.data.pipeline import EpochNegatives, PreparedData
from recbench.data.shards import ShardLoader, ShardSplit


def make_loader(split, batch_size: int, **kwargs) -> BatchLoader | ShardLoader:
    """The loader of one split: ``ShardLoader`` over memory-mapped shards, ``BatchLoader`` over
    tensors; both take the same arguments and yield the same batch layout."""
    if isinstance(split, ShardSplit):
        return ShardLoader(split, batch_size, **kwargs)
    return BatchLoader(split, batch_size, **kwargs)


class RecDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data: PreparedData,
        batch_size: int = 1024,
        eval_batch_size: int = 8192,
        seed: int = 0,
        device_resident: bool | str = "auto",
        keys: set[str] | None = None,
        negatives: EpochNegatives | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.device_resident = device_resident
        # only the tensors the model reads are gathered into batches
        self.splits = {
            name: split.select(keys)
            if isinstance(split, ShardSplit)
            else {k: v for k, v in split.items() if keys is None or k in keys}
            for name, split in data.splits.items()
        }
        self._train: BatchLoader | None = None
        self.negatives = negatives  # redraws training negatives each epoch when set
        if negatives is not None:  # rewritten in place: own copies, not the prepared tensors
            train = self.splits["train"]
            for k in ("sparse", *negatives.attributes):
                if k in train:
                    train[k] = train[k].clone()

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        resident = self.device_resident
        if resident == "auto":
            resident = device.type == "cuda"
        sharded = any(isinstance(s, ShardSplit) for s in self.splits.values())
        if resident and device.type != "cpu" and not sharded:  # shards stay on disk
            self.splits = {
                name: {k: t.to(device) for k, t in split.items()}
                for name, split in self.splits.items()
            }

    @property
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> BatchLoader:
        rank, world = self._rank_world
        if self._train is None:  # one loader for the whole fit, so its epoch counter advances
            self._train = make_loader(
                self.splits["train"],
                self.batch_size,
                shuffle=True,
                seed=self.seed,
                rank=rank,
                world_size=world,
                before_epoch=self._before_epoch,
            )
        return self._train

    def _before_epoch(self, epoch: int) -> None:
        if self.negatives is not None:
            self.negatives(self.splits["train"], epoch)

    def _eval(self, split: str) -> BatchLoader:
        rank, world = self._rank_world
        return make_loader(self.splits[split], self.eval_batch_size, rank=rank, world_size=world)

    def val_dataloader(self) -> BatchLoader:
        return self._eval("val")

    def test_dataloader(self) -> BatchLoader:
        return self._eval("test")
