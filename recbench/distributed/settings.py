"""The settings of ``trainer=torchrec``: importable without torch or torchrec, so checking a
config stays fast."""

from __future__ import annotations

from recbench.errors import ConfigError

SHARDINGS = ("table_wise", "row_wise")


class TorchRecTrainer:
    """The settings of ``trainer=torchrec`` (configs/trainer/torchrec.yaml). The keys shared with
    Lightning's ``Trainer`` mean what they mean there; those this loop cannot honour are refused
    by ``check``. ``sharding``: ``table_wise`` (each table whole on one rank, placed by TorchRec's
    planner) or ``row_wise`` (each table's rows split across all ranks). ``table_optimizer``:
    how FBGEMM trains the sharded tables, ``auto`` (the fused form of ``optimizer``) or ``sgd``,
    ``adagrad``, ``rowwise_adagrad``, ``adam`` (not on CPU), at ``table_lr`` (default
    ``optimizer.lr``)."""

    def __init__(
        self,
        accelerator: str = "cpu",
        devices: int = 1,
        num_nodes: int = 1,
        strategy: str = "ddp",
        precision: str = "32-true",
        sharding: str = "table_wise",
        table_optimizer: str = "auto",
        table_lr: float | None = None,
        max_epochs: int = 10,
        min_epochs: int = 1,
        gradient_clip_val: float | None = None,
        log_every_n_steps: int = 50,
        num_sanity_val_steps: int = 0,
        enable_model_summary: bool = False,
        enable_progress_bar: bool = True,
        deterministic: bool = False,
        benchmark: bool = False,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        fast_dev_run: bool | int = False,
    ) -> None:
        self.accelerator = accelerator
        self.devices = devices
        self.num_nodes = num_nodes
        self.precision = str(precision)
        self.sharding = sharding
        self.table_optimizer = table_optimizer
        self.table_lr = table_lr
        self.max_epochs = int(max_epochs)
        self.min_epochs = int(min_epochs or 1)
        self.gradient_clip_val = gradient_clip_val
        self.log_every_n_steps = log_every_n_steps
        self.limits = {
            "train": limit_train_batches,
            "val": limit_val_batches,
            "test": limit_test_batches,
        }
        if fast_dev_run:  # one batch of each, one epoch
            n = 1 if fast_dev_run is True else int(fast_dev_run)
            self.limits = {k: n for k in self.limits}
            self.max_epochs = 1

    def check(self) -> None:
        if self.sharding not in SHARDINGS:
            raise ConfigError(
                f"trainer.sharding={self.sharding!r} is not one of {', '.join(SHARDINGS)}"
            )
        if self.precision not in ("32-true", "32"):
            raise ConfigError(
                f"trainer.precision={self.precision}: trainer=torchrec trains in float32 only; "
                "use trainer.precision=32-true"
            )
        if self.gradient_clip_val:
            raise ConfigError(
                "trainer.gradient_clip_val: the sharded tables are updated inside the backward "
                "pass, before any clipping could see their gradients; leave it null"
            )

    def batches(self, split: str, available: int) -> int:
        """How many of ``available`` batches of ``split`` to run (``limit_<split>_batches``)."""
        limit = self.limits[split]
        if limit is None:
            return available
        if isinstance(limit, float) and limit <= 1.0:
            return max(1, int(available * limit)) if available else 0
        return min(available, int(limit))


__all__ = ["SHARDINGS", "TorchRecTrainer"]
