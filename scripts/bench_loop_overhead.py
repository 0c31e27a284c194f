"""What Lightning's training loop costs per step, apart from the model.

    python scripts/bench_loop_overhead.py                 # 2,000 steps, 2 rounds
    python scripts/bench_loop_overhead.py --steps 5000 --rounds 3 --threads 1

Trains a one-layer model (Linear(4, 1) on batches of 8 rows, SGD) for ``--steps`` steps three
ways, alternating, in one process: under ``Trainer.fit`` with automatic optimisation (what every
recbench task but ``rl`` uses), under ``Trainer.fit`` with manual optimisation, and in a plain
loop (forward, ``zero_grad``, backward, ``step``). The model's own work is a few microseconds, so
the differences are the loop's cost per step: hooks, the optimizer closure, batch transfer and
bookkeeping. Prints microseconds per step (median over rounds).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch


class OneLayer(pl.LightningModule):
    def __init__(self, manual: bool) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        loss = self.lin(batch["x"]).mean()
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class EpochTimer(pl.Callback):
    def on_train_epoch_start(self, trainer, module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds = time.perf_counter() - self.t0


class Batches:
    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_us(batches: Batches, manual: bool) -> float:
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(OneLayer(manual), train_dataloaders=batches)
    return 1e6 * timer.seconds / len(batches)


def plain_us(batches: Batches) -> float:
    model = OneLayer(manual=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t0 = time.perf_counter()
    for batch in batches:
        loss = model.lin(batch["x"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 1e6 * (time.perf_counter() - t0) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = Batches([{"x": torch.randn(8, 4)} for _ in range(args.steps)])
    results: dict[str, list[float]] = {"fit, automatic": [], "fit, manual": [], "plain loop": []}
    for _ in range(args.rounds):
        results["fit, automatic"].append(lightning_us(batches, manual=False))
        results["fit, manual"].append(lightning_us(batches, manual=True))
        results["plain loop"].append(plain_us(batches))
    for name, values in results.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:15s} {statistics.median(values):6.0f} us/step  (rounds: {shown})")


if __name__ == "__main__":
    main()
