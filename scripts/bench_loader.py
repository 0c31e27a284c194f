"""Batch loader vs a per-row ``Dataset`` + ``DataLoader`` over the same tensors.

Reports batches/s of each way of producing shuffled training batches of MovieLens-100K (when
RECBENCH_DATA_DIR holds it) or of the synthetic world, with the full DIN feature set (sparse,
multi-value genres, two 50-long histories). Usage:

    python scripts/bench_loader.py [--dataset movielens-100k] [--batch-size 1024] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, Dataset

from recbench.cli import config_dir
from recbench.data.loader import BatchLoader
from recbench.data.pipeline import prepare


class PerRowDataset(Dataset):
    """The usual peer pattern: one dict of tensors per row, collated by the DataLoader."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.n = len(tensors["label"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def rate(batches, epochs: int) -> float:
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for _b in batches:
            n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "movielens-100k" if os.environ.get("RECBENCH_DATA_DIR") else "synthetic"
    ap.add_argument("--dataset", default=default)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("data", overrides=[f"dataset={args.dataset}"])
    train = prepare(cfg.dataset).splits["train"]
    ours = BatchLoader(train, args.batch_size, shuffle=True, seed=0)
    peer = DataLoader(PerRowDataset(train), batch_size=args.batch_size, shuffle=True, num_workers=0)
    result = {
        "dataset": args.dataset,
        "rows": len(train["label"]),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "batch_loader_batches_per_sec": rate(ours, args.epochs),
        "per_row_dataloader_batches_per_sec": rate(peer, 1),
    }
    result["speedup"] = (
        result["batch_loader_batches_per_sec"] / result["per_row_dataloader_batches_per_sec"]
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
