"""Mean ± std tables over seeds from a results store, in Markdown (used for docs/results.md).

    python scripts/results_tables.py <outputs root> --dataset movielens-100k [--models lr,fm,...]

Takes the latest finished record per (model, seed) for the dataset.
"""

from __future__ import annotations

import argparse
import statistics

from recbench.results import read_records


def fmt(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--models", default=None)
    args = ap.parse_args()
    latest: dict[tuple[str, int], dict] = {}
    for r in read_records(args.root):
        if r.get("status") == "finished" and r["dataset"] == args.dataset:
            latest[(r["model"], r["seed"])] = r
    order = args.models.split(",") if args.models else sorted({m for m, _ in latest})
    oracle = [r["oracle"]["auc"] for r in latest.values() if r.get("oracle")]
    print(
        "| model | seeds | test AUC | test GAUC | test logloss | val AUC | train samples/s "
        "| params |" + (" gap to oracle |" if oracle else "")
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if oracle else ""))
    for m in order:
        runs = [r for (model, _), r in sorted(latest.items()) if model == m]
        if not runs:
            continue
        auc = [r["test"]["auc"] for r in runs]
        row = [
            m,
            str(len(runs)),
            fmt(auc),
            fmt([r["test"]["gauc"] for r in runs]),
            fmt([r["test"]["logloss"] for r in runs]),
            fmt([r["val"]["auc"] for r in runs]),
            f"{statistics.mean(r['perf']['train_samples_per_sec'] for r in runs):,.0f}",
            f"{runs[0]['params']:,}",
        ]
        if oracle:
            row.append(
                f"{statistics.mean(r['oracle']['auc'] - r['test']['auc'] for r in runs):.4f}"
            )
        print("| " + " | ".join(row) + " |")
    if oracle:
        print(f"\nOracle test AUC (true click probability): {oracle[0]:.4f}")


if __name__ == "__main__":
    main()
