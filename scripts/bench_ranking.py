"""Ranking speed: full-ranking evaluation users/s and top-K training samples/s, as JSON lines.

    python scripts/bench_ranking.py eval  [--users 100000] [--items 50000] [--dim 64]
                                          [--chunk N ...] [--path blocked|full]
                                          [--targets softmax|top|random] [--repeat N]
    python scripts/bench_ranking.py train [--model neumf] [--dataset movielens-100k]
                                          [--batch-size 256] [--steps 300]
    common: [--threads 1]

``eval`` times the evaluation of ``task=topk`` (``recbench.tasks.topk.chunk_metrics``) on a
generated table: a dot-product model (GMF at ``--dim``), 20 masked training items per user, one
held-out item ranked among every item and among 99 sampled negatives, cut-offs 5, 10, 20;
users/s over all chunks, one line per ``--chunk`` (users per chunk; default: the task's own);
``--repeat N`` reports the fastest of N runs.

``--path blocked`` is what the task does for a model with ``score_items`` (from 2,048 items;
forced here for any ``--items``): items scored, masked and counted in blocks that stay in the
cache, a user leaving the blocks once 20 items outrank its target. ``--path full`` is the
task's path for other models and small catalogues: the chunk's whole (users × items) score
matrix, then the mask and the count. The held-out items decide how
early users leave: ``--targets softmax`` (the default) draws each user's held-out item with
probability ∝ exp(score / (0.5 σ)), σ the scores' standard deviation: the choice model of a
user whose tastes the model knows up to noise (HR@20 about 0.1, reported). ``top`` makes it
the item the model scores highest, so no user leaves early (the blocked path's worst case, a
perfect model); ``random`` draws it uniformly, so almost every user leaves after the first
block (an untrained model). Beside each figure: the users/s of the same score products alone
with no user leaving (every block for every user, or the whole chunks), the ceiling of that
path on this CPU without the early exit.

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

import numpy as np
import torch
from torch import Tensor

SOFTMAX_TEMPERATURE = 0.5  # --targets softmax, in units of the scores' spread: HR@20 ≈ 0.1


def load() -> dict:
    return {
        "load_avg_1m": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def bench_eval(
    users: int,
    items: int,
    dim: int,
    seen: int,
    chunk: int | None,
    path: str,
    targets: str,
    repeat: int = 1,
) -> dict:
    from recbench.data.schema import InteractionSchema
    from recbench.models.gmf import GMF
    from recbench.ranking import draw_negatives
    from recbench.tasks import topk

    g = torch.Generator().manual_seed(0)
    model = GMF(InteractionSchema(users, items, torch.zeros(items + 1)), dim=dim).eval()
    with torch.no_grad():  # scores of unit variance, as a trained model's spread, not init's
        for table in (model.user.weight, model.item.weight):
            table.normal_(0.0, dim**-0.25, generator=g)
    excluded = torch.randint(1, items + 1, (users, seen), generator=g)
    if targets != "random":  # the best-scored item not excluded, or one drawn by softmax
        best = []
        with torch.no_grad():
            for start in range(0, users, 1024):
                rows = torch.arange(start, min(start + 1024, users))
                s = model.score_all({"user": rows + 1})
                if targets == "softmax":  # Gumbel-max: item i with probability ∝ exp(s_i / τ)
                    u = torch.rand(s.shape, generator=g).clamp_(min=1e-12)
                    s = s / (SOFTMAX_TEMPERATURE * s.std()) - torch.log(-torch.log(u))
                s[:, 0] = float("-inf")
                s.scatter_(1, excluded[rows], float("-inf"))
                best.append(s.argmax(1))
        held = torch.cat(best)
    else:  # any item not excluded: a redraw where it is
        held = torch.randint(1, items + 1, (users,), generator=g)
        clash = (excluded == held[:, None]).any(1)
        while bool(clash.any()):
            held[clash] = torch.randint(1, items + 1, (int(clash.sum()),), generator=g)
            clash = (excluded == held[:, None]).any(1)
    seen_items = torch.cat([excluded, held[:, None]], 1).reshape(-1).numpy()
    seen_ptr = np.arange(0, (users + 1) * (seen + 1), seen + 1)
    neg = draw_negatives(seen_ptr, seen_items, items, 99, np.random.default_rng(0))
    split = {
        "targets": held[:, None],
        "neg": torch.from_numpy(neg),
        "exclude_indptr": torch.arange(0, (users + 1) * seen, seen),
        "exclude_items": excluded.reshape(-1),
    }
    blocked = path == "blocked"
    if chunk is None:
        chunk = topk.BLOCKED_CHUNK_USERS if blocked else topk.SCORES_PER_CHUNK // (items + 1)
    chunks = [torch.arange(s, min(s + chunk, users)) for s in range(0, users, chunk)]
    ks = (5, 10, 20)

    def evaluate() -> list[Tensor]:
        hits = []
        with torch.no_grad():
            for unit in chunks:
                if blocked:
                    v = topk.chunk_metrics(model, unit + 1, split, unit, ks, items, True)
                else:
                    scores = topk.score_all(model, {"user": unit + 1}, items)
                    v = topk.unit_metrics(scores, split, unit, ks)
                hits.append(v["hr@20"])
        return hits

    def products() -> None:
        """The same score products with no user leaving: the path's ceiling without the exit."""
        with torch.no_grad():
            for unit in chunks:
                batch = {"user": unit + 1}
                if blocked:
                    block = max(topk.MIN_BLOCK, topk.BLOCK_SCORES["cpu"] // len(unit))
                    for start in range(1, items + 1, block):
                        model.score_items(batch, slice(start, min(start + block, items + 1)))
                else:
                    model.score_all(batch)

    seconds = product = float("inf")
    for _ in range(repeat):  # alternating; the fastest of each: noise only ever slows a run
        t0 = time.perf_counter()
        hits = evaluate()
        seconds = min(seconds, time.perf_counter() - t0)
        t0 = time.perf_counter()
        products()
        product = min(product, time.perf_counter() - t0)
    return {
        "bench": "full_ranking_eval",
        "path": path,
        "targets": targets,
        "users": users,
        "items": items,
        "dim": dim,
        "chunk_users": chunk,
        "repeat": repeat,
        "seconds": seconds,
        "users_per_sec": users / seconds,
        "product_only_users_per_sec": users / product,
        "hr@20": float(torch.cat(hits).mean()),
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
    ap.add_argument("--path", choices=["blocked", "full"], default="blocked")
    ap.add_argument("--targets", choices=["top", "softmax", "random"], default="softmax")
    ap.add_argument("--repeat", type=int, default=1, help="the fastest of N runs (eval)")
    ap.add_argument("--model", default="neumf")
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "eval":
        for chunk in args.chunk:
            out = bench_eval(
                args.users,
                args.items,
                args.dim,
                args.seen,
                chunk,
                args.path,
                args.targets,
                args.repeat,
            )
            print(json.dumps(out | load()), flush=True)
    else:
        out = bench_train(args.model, args.dataset, args.batch_size, args.steps)
        print(json.dumps(out | load()))


if __name__ == "__main__":
    main()
