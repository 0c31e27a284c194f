"""Ranking speed: full-ranking evaluation users/s and top-K training samples/s, as JSON lines.

    python scripts/bench_ranking.py eval  [--users 100000] [--items 50000] [--dim 64]
                                          [--chunk N ...] [--dtype float32|bfloat16]
    python scripts/bench_ranking.py train [--model neumf] [--dataset movielens-100k]
                                          [--batch-size 256] [--steps 300]
    common: [--threads 1]

``eval`` times the evaluation path of ``task=topk`` on a generated table: per chunk of users one
``score_all`` of a dot-product model (GMF at ``--dim``), masking of 20 training items per user,
the pessimistic rank of one held-out item among every item, and its rank among 99 sampled
negatives; users/s over all chunks, one line per ``--chunk`` (users per chunk; default: the
task's own, ``SCORES_PER_CHUNK`` scores a chunk), and beside it the users/s of the score
products alone over the same chunks, the ceiling of this machine's matrix product.
``--dtype bfloat16`` scores with bf16 weights (not what the task does) and also reports how
many of the first chunk's users get another rank or HR@10 than in float32.

``train`` times the training step of ``task=topk`` (forward, BCE over a positive and 4 sampled
negatives per positive, backward, Adam) over the task's own loader, after 20 warm-up steps,
without Lightning; samples are scored (user, item) rows. Every line carries the 1-minute load
average and the thread count: figures on a shared machine depend on both.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def load() -> dict:
    return {
        "load_avg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def bench_eval(users: int, items: int, dim: int, seen: int, chunk: int | None, dtype: str) -> dict:
    from recbench.data.schema import InteractionSchema
    from recbench.models.gmf import GMF
    from recbench.ranking import target_ranks
    from recbench.tasks.topk import SCORES_PER_CHUNK, score_all, unit_metrics

    g = torch.Generator().manual_seed(0)
    model = GMF(InteractionSchema(users, items, torch.zeros(items + 1)), dim=dim).eval()
    with torch.no_grad():  # scores of unit variance, as a trained model's spread, not init's
        for table in (model.user.weight, model.item.weight):
            table.normal_(0.0, dim**-0.25, generator=g)
    split = {
        "targets": torch.randint(1, items + 1, (users, 1), generator=g),
        "neg": torch.randint(1, items + 1, (users, 99), generator=g),
        "exclude_indptr": torch.arange(0, (users + 1) * seen, seen),
        "exclude_items": torch.randint(1, items + 1, (users * seen,), generator=g),
    }
    split["exclude_items"][::seen] = 0  # never the target: padding column instead
    chunk = chunk or max(1, SCORES_PER_CHUNK // (items + 1))
    low = dtype == "bfloat16"
    out: dict = {}
    if low:  # agreement with float32 on the first chunk (the scores differ by rounding)
        unit = torch.arange(min(chunk, users))
        with torch.no_grad():
            ref = score_all(model, {"user": unit + 1}, items)
            bf = model.to(torch.bfloat16).score_all({"user": unit + 1})
        r32 = target_ranks(ref, split["targets"][unit])
        r16 = target_ranks(bf, split["targets"][unit])
        out = {
            "checked_users": len(unit),
            "rank_differs": float((r32 != r16).float().mean()),
            "hr10_differs": float(((r32 < 10) != (r16 < 10)).float().mean()),
        }
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, users, chunk):
            unit = torch.arange(start, min(start + chunk, users))
            if low:  # bf16 scores as they are (the task's score_all widens them to float32)
                scores = model.score_all({"user": unit + 1})
            else:
                scores = score_all(model, {"user": unit + 1}, items)
            unit_metrics(scores, split, unit, (5, 10, 20))
    seconds = time.perf_counter() - t0
    # the score products alone over the same chunks: the ceiling the evaluation can approach
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, users, chunk):
            unit = torch.arange(start, min(start + chunk, users))
            model.score_all({"user": unit + 1})
    product = time.perf_counter() - t0
    return {
        "bench": "full_ranking_eval",
        "users": users,
        "items": items,
        "dim": dim,
        "dtype": dtype,
        "chunk_users": chunk,
        "seconds": seconds,
        "users_per_sec": users / seconds,
        "product_only_users_per_sec": users / product,
        **out,
    }


def bench_train(model_name: str, dataset: str, batch_size: int, steps: int) -> dict:
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.train import build

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "task=topk",
                f"model={model_name}",
                f"dataset={dataset}",
                f"batch_size={batch_size}",
            ],  # fmt: skip
        )
    from recbench.tasks.topk import TopKTask

    data = TopKTask.prepare(cfg, log=lambda _: None)
    torch.manual_seed(0)
    task, dm = build(cfg, data)
    opt = task.configure_optimizers()
    loader = dm.train_dataloader()
    task.train()
    log = task.log
    task.log = lambda *a, **k: None  # no trainer here: logging is Lightning's business
    task.loss_guard.check_every = 0  # and no trainer to read the guard across ranks
    done, rows, t0 = 0, 0, 0.0
    while done < steps + 20:
        for i, batch in enumerate(loader):
            if done == 20:
                t0, rows = time.perf_counter(), 0
            loss = task.training_step(batch, i + 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rows += len(batch["label"])
            done += 1
            if done >= steps + 20:
                break
    seconds = time.perf_counter() - t0
    task.log = log
    return {
        "bench": "topk_train",
        "model": model_name,
        "dataset": dataset,
        "batch_size": batch_size,
        "loss": cfg.task.loss,
        "steps": steps,
        "samples_per_sec": rows / seconds,
        "step_ms": 1000 * seconds / steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["eval", "train"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seen", type=int, default=20)
    ap.add_argument("--chunk", type=int, nargs="*", default=[None])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--model", default="neumf")
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "eval":
        for chunk in args.chunk:
            out = bench_eval(args.users, args.items, args.dim, args.seen, chunk, args.dtype)
            print(json.dumps(out | load()), flush=True)
    else:
        out = bench_train(args.model, args.dataset, args.batch_size, args.steps)
        print(json.dumps(out | load()))


if __name__ == "__main__":
    main()
