"""How much a sampled top-K metric owes to its one draw of evaluation negatives.

    python scripts/sampled_draws.py RUN_DIR [RUN_DIR ...] [--draws 200] [--negatives 99 100]
                                    [--k 10] [--split test] [--json out.json]

``task=topk`` ranks each test user's held-out item against N negatives drawn once from
``task.eval.seed`` and shared by every model and seed (the NCF protocol). A figure measured that
way carries the luck of that one draw as well as the model's. This script re-scores the test
users of finished ``task=topk`` runs (their best checkpoints) over every item once, then ranks
the held-out item against ``--draws`` fresh draws of N negatives each, uniform over the items the
user never interacted with (the task's rule), and reports sampled HR@K and NDCG@K:

- ``recorded``: with the run's own negatives; it must equal the run's ``metrics.json`` (checked);
- over the draws: mean, standard deviation, 2.5 / 97.5 percentiles, and the share of draws at or
  above ``--bar`` when given; for a group's mean over its runs, and for one run scored on one
  draw (every run and draw pooled), the spread of a single figure in a published table.

The runs are grouped by model; a group's value for one draw is the mean over its runs (seeds)
scored against that same draw, as a compare's seed mean is. The runs must share one prepared
dataset (same split and evaluation options). Full-ranking metrics do not depend on a draw and are
not recomputed.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recbench.data.implicit import click_log
from recbench.errors import ConfigError


def load_run(run_dir: Path) -> tuple[str, dict, object]:
    """(model name, recorded metrics, the run's config) of a finished top-K run."""
    metrics_path = run_dir / "metrics.json"
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not metrics_path.exists() or not cfg_path.exists():
        raise ConfigError(
            f"{run_dir} is not a finished run (no metrics.json or .hydra/config.yaml)"
        )
    record = json.loads(metrics_path.read_text())
    cfg = OmegaConf.load(cfg_path)
    if "topk" not in str(cfg.task.get("_target_", "")):
        raise ConfigError(
            f"{run_dir} is a {cfg.task._target_} run; this script reads task=topk runs"
        )
    if cfg.task.get("positive_threshold") is not None or click_log(
        instantiate(cfg.dataset.adapter)
    ):
        raise ConfigError(
            f"{run_dir}: only runs where every event is a positive (task.positive_threshold=null, "
            "not a click log) are read: the pool of fresh negatives is rebuilt from the positives"
        )
    return str(record.get("model") or cfg.model.get("name") or run_dir.name), record, cfg


def test_scores(cfg, run_dir: Path, data, split: str) -> torch.Tensor:
    """(units, items + 1) scores of every item for the split's users, the excluded items (training
    items; at test also validation items) at -inf, as the task ranks them."""
    from recbench.models import build_model
    from recbench.models.neumf import run_state
    from recbench.ranking import mask_items
    from recbench.tasks.topk import exclusions, score_all

    model = build_model(cfg.model, data.schema)
    model.load_state_dict(run_state(run_dir))
    model.eval()
    ev = data.eval[split]
    units = torch.arange(len(ev["user"]))
    with torch.no_grad():
        scores = score_all(model, {"user": ev["user"]}, data.schema.num_items)
    rows, cols = exclusions(ev, units)
    mask_items(scores, rows, cols)
    return scores


def seen_matrix(data, split: str) -> np.ndarray:
    """(units, items + 1) bool: the items each of the split's users interacted with in any split,
    the pool a sampled negative never comes from (every event a positive, as in NCF)."""
    n_users, n_items = data.schema.num_users, data.schema.num_items
    units_users = data.eval[split]["user"].numpy()
    unit_of_user = np.full(n_users + 1, -1)
    unit_of_user[units_users] = np.arange(len(units_users))
    seen = np.zeros((len(units_users), n_items + 1), dtype=bool)
    units = unit_of_user[data.train["user"].numpy()]
    ok = units >= 0
    seen[units[ok], data.train["item"].numpy()[ok]] = True
    for ev in data.eval.values():
        units = unit_of_user[ev["user"].numpy()]
        ok = units >= 0
        targets = ev["targets"].numpy()[ok]
        seen[np.repeat(units[ok], targets.shape[1]), targets.ravel()] = True
    seen[:, 0] = True  # the padding code
    return seen


def draw(seen: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(units, n) distinct item codes per unit, uniform over its unseen items."""
    keys = rng.random(seen.shape)
    keys[seen] = np.inf
    return np.argpartition(keys, n - 1, axis=1)[:, :n]


def sampled(target: np.ndarray, scores: np.ndarray, neg: np.ndarray, k: int) -> tuple[float, float]:
    """Mean sampled HR@k and NDCG@k: the held-out item's rank counts every negative scoring at
    least as high (the task's pessimistic tie rule)."""
    rank = (np.take_along_axis(scores, neg, 1) >= target[:, None]).sum(1)
    hit = rank < k
    return float(hit.mean()), float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())


def summary(values: np.ndarray, bar: float | None) -> dict:
    out = {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)),
        "p2.5": float(np.percentile(values, 2.5)),
        "p97.5": float(np.percentile(values, 97.5)),
        "min": float(values.min()),
        "max": float(values.max()),
    }
    if bar is not None:
        out["share_at_or_above_bar"] = float((values >= bar).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--negatives", type=int, nargs="+", default=[99, 100])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--seed", type=int, default=12345, help="seed of the fresh draws")
    ap.add_argument("--bar", type=float, default=None, help="HR@K to count draws against")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from recbench.tasks.topk import TopKTask

    groups: dict[str, list[dict]] = defaultdict(list)
    data, key = None, None
    for run_dir in args.runs:
        name, record, cfg = load_run(run_dir)
        this_key = TopKTask.data_key(cfg)
        if data is None:
            data, key = TopKTask.prepare(cfg, log=lambda *_: None), this_key
        elif this_key != key:
            raise ConfigError(f"{run_dir} was prepared as {this_key}, the first run as {key}")
        scores = test_scores(cfg, run_dir, data, args.split).numpy()
        ev = data.eval[args.split]
        if ev["targets"].shape[1] != 1:
            raise ConfigError(f"{run_dir}: one held-out item per user (leave-one-out) is read")
        target = np.take_along_axis(scores, ev["targets"].numpy()[:, :1], 1)[:, 0]
        hr, ndcg = sampled(target, scores, ev["neg"].numpy(), args.k)
        want = (record.get(args.split) or {}).get("sampled", {}).get(f"hr@{args.k}")
        if want is not None and abs(want - hr) > 1e-6:
            raise SystemExit(
                f"{run_dir}: re-scored sampled hr@{args.k} {hr:.6f} differs from the recorded "
                f"{want:.6f}: the checkpoint or the prepared data is not the run's"
            )
        groups[name].append(
            {"run": str(run_dir), "target": target, "scores": scores, "hr": hr, "ndcg": ndcg}
        )

    seen = seen_matrix(data, args.split)
    if args.split == "test":  # the fresh draws follow the task's rule: check it on its own draw
        own = data.eval["test"]["neg"].numpy()
        if np.take_along_axis(seen, own, 1).any():
            raise SystemExit("the run's own negatives include seen items: the pool rule differs")
    out: dict = {"k": args.k, "split": args.split, "draws": args.draws, "models": {}}
    for name, runs in groups.items():
        entry = {
            "runs": [r["run"] for r in runs],
            "recorded": {
                f"hr@{args.k}": float(np.mean([r["hr"] for r in runs])),
                f"ndcg@{args.k}": float(np.mean([r["ndcg"] for r in runs])),
                "per_run_hr": [round(r["hr"], 4) for r in runs],
            },
        }
        for n in args.negatives:
            rng = np.random.default_rng(args.seed)  # the same draws for every model
            each = np.empty((args.draws, len(runs), 2))  # (draw, run, [hr, ndcg])
            for d in range(args.draws):
                neg = draw(seen, n, rng)
                each[d] = [sampled(r["target"], r["scores"], neg, args.k) for r in runs]
            hrs, ndcgs = each[:, :, 0].mean(1), each[:, :, 1].mean(1)
            entry[f"{n} negatives"] = {
                f"hr@{args.k}": summary(hrs, args.bar),
                f"ndcg@{args.k}": summary(ndcgs, None),
                # one run scored on one draw, as a single figure in a published table is
                f"one run, one draw: hr@{args.k}": summary(each[:, :, 0].ravel(), args.bar),
            }
        out["models"][name] = entry
        rec = entry["recorded"]
        print(
            f"{name} ({len(runs)} runs): recorded hr@{args.k} {rec[f'hr@{args.k}']:.4f} "
            f"ndcg@{args.k} {rec[f'ndcg@{args.k}']:.4f} (per run {rec['per_run_hr']})"
        )
        for n in args.negatives:
            h, g = (
                entry[f"{n} negatives"][f"hr@{args.k}"],
                entry[f"{n} negatives"][f"ndcg@{args.k}"],
            )
            extra = (
                f", {h['share_at_or_above_bar']:.0%} of draws >= {args.bar}"
                if args.bar is not None
                else ""
            )
            print(
                f"  {n} negatives, {args.draws} draws: "
                f"hr@{args.k} {h['mean']:.4f} ± {h['std']:.4f} "
                f"[{h['p2.5']:.4f}, {h['p97.5']:.4f}]{extra}; ndcg@{args.k} {g['mean']:.4f} ± "
                f"{g['std']:.4f} [{g['p2.5']:.4f}, {g['p97.5']:.4f}]"
            )
            one = entry[f"{n} negatives"][f"one run, one draw: hr@{args.k}"]
            extra = (
                f", {one['share_at_or_above_bar']:.0%} >= {args.bar}"
                if args.bar is not None
                else ""
            )
            print(
                f"    one run on one draw: hr@{args.k} {one['mean']:.4f} ± {one['std']:.4f} "
                f"[{one['p2.5']:.4f}, {one['p97.5']:.4f}]{extra}"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
