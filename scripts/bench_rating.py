"""Training-epoch time of the rating models: I-AutoRec, U-AutoRec and biased MF.

One epoch = one pass over the training data as ``recbench train task=rating`` runs it (rows of
the rating matrix gathered from CSR and densified, or (user, item, rating) batches), with the
forward, the loss of ``RatingTask``, backward and an Adam step; evaluation excluded. Reports the
median over epochs after a warm-up, with the machine's load average, as JSON. Usage:

    RECBENCH_DATA_DIR=... python scripts/bench_rating.py [--epochs 5] [--threads 1]
        [--batch-rows 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from recbench.cli import config_dir
from recbench.data.loader import BatchLoader
from recbench.data.ratings import RowLoader, densify, prepare_ratings
from recbench.models.autorec import AutoRec
from recbench.models.mf import MF
from recbench.tasks.rating import RatingTask


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_seconds(task: RatingTask, batches, device: torch.device, epochs: int) -> dict[str, float]:
    """Median wall and CPU seconds of an epoch. On a shared, loaded machine the CPU time (this
    process's, with one thread) is what the epoch costs on an idle core."""
    opt = task.configure_optimizers()  # Adam at 1e-3, built as a run builds it
    wall, cpu = [], []
    for _ in range(epochs + 1):  # the first is warm-up
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches():
            loss, _ = task.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"epoch_s": statistics.median(wall[1:]), "epoch_cpu_s": statistics.median(cpu[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-rows", type=int, default=0, help="AutoRec rows per batch; 0: all")
    ap.add_argument("--batch-size", type=int, default=1024, help="MF ratings per batch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device {args.device}: torch sees no GPU (torch {torch.__version__}); "
            "use --device cpu here"
        )
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={args.dataset}"])
    data = prepare_ratings(cfg.dataset, log=lambda s: None)
    results = {}
    for name, based in (("i_autorec", "item"), ("u_autorec", "user")):
        model = AutoRec(data.schema, based=based).to(device)
        task = RatingTask(model, torch.optim.Adam)
        matrix = data.matrix(based).to(device)  # device resident, as on a GPU run
        rows = args.batch_rows or (
            data.schema.num_items if based == "item" else data.schema.num_users
        )
        loader = RowLoader(matrix, rows)

        def batches(loader=loader, matrix=matrix):
            for b in loader:
                yield densify(b, len(b["row"]), matrix.n_cols)

        results[name] = {
            **epoch_seconds(task, batches, device, args.epochs),
            "rows_per_batch": rows,
            "steps": len(loader),
            "ratings": len(data.splits["train"]["rating"]),
        }
    model = MF(data.schema).to(device)
    task = RatingTask(model, torch.optim.Adam)
    train = {k: v.to(device) for k, v in data.splits["train"].items()}
    loader = BatchLoader(train, args.batch_size, shuffle=True)
    results["mf"] = {
        **epoch_seconds(task, lambda: iter(loader), device, args.epochs),
        "batch_size": args.batch_size,
    }
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "load_average_1m": os.getloadavg()[0],
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
