"""Write a context-aware log of positive events, like the app-usage logs that NFM, AFM and DeepFM
were measured on: user, item and eight context columns, with a planted choice model in which
context decides much of what a user picks.

    python scripts/make_context_log.py --out /tmp/ctxlog [--events 60000] [--seed 0]

writes ``events.tsv`` (user, item, time, hour, weekday, weather, city, device, companion, season,
network) and ``items.tsv`` (item, category). Each event: a user and a context are drawn; the item
is drawn from softmax over items of user affinity + context × category affinity (daypart, weather,
city, device, companion) + item popularity. With its context columns a model can tell which items
fit the moment; without them it only knows who and what. ``docs/datasets.md`` declares the result
in YAML alone and trains DeepFM, NFM and AFM on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

CONTEXT = {  # column → number of values
    "hour": 24,
    "weekday": 7,
    "weather": 4,
    "city": 12,
    "device": 3,
    "companion": 4,
    "season": 4,
    "network": 3,
}
PLANTED = ("daypart", "weather", "city", "device", "companion")  # contexts that cross categories


def generate(events: int, users: int, items: int, categories: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    dim = 8
    user_vec = rng.normal(0, 1, (users, dim))
    item_vec = rng.normal(0, 1, (items, dim))
    category = rng.integers(0, categories, items)
    popularity = rng.normal(0, 0.7, items)
    sizes = {"daypart": 4, **{k: CONTEXT[k] for k in PLANTED if k != "daypart"}}
    affinity = {k: rng.normal(0, 1.3, (n, categories)) for k, n in sizes.items()}

    u = rng.integers(0, users, events)
    ctx = {k: rng.integers(0, n, events) for k, n in CONTEXT.items()}
    daypart = ctx["hour"] // 6
    logits = 0.6 * user_vec[u] @ item_vec.T / np.sqrt(dim) + popularity[None, :]
    for k in PLANTED:
        values = daypart if k == "daypart" else ctx[k]
        logits += affinity[k][values][:, category]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    chosen = (p.cumsum(1) > rng.random(events)[:, None]).argmax(1)
    time = np.sort(rng.integers(1_600_000_000, 1_600_000_000 + 90 * 86_400, events))
    log = pl.DataFrame({"user": u, "item": chosen, "time": time, **ctx})
    catalogue = pl.DataFrame({"item": np.arange(items), "category": category})
    return log, catalogue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--categories", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    log, catalogue = generate(a.events, a.users, a.items, a.categories, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    log.write_csv(a.out / "events.tsv", separator="\t")
    catalogue.write_csv(a.out / "items.tsv", separator="\t")
    print(f"wrote {log.height:,} events and {catalogue.height:,} items to {a.out}")


if __name__ == "__main__":
    main()
