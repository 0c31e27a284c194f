"""The docs/results.md table of one compare report, in Markdown.

    recbench compare lineage=ctr dataset=movielens-100k seeds=3 report_only=true
    python scripts/results_tables.py outputs/compare/<time>_ctr_movielens-100k

Reads the ``report.json`` that `recbench compare` (or its ``report_only`` rebuild) wrote and
prints one row per model: mean ± std over seeds of every test metric the task reports (in the
task's order, primary first), train samples/s, parameter count and, where the data has an oracle
(the synthetic world), each model's gap to the oracle's value of every metric it has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAMES = {"auc": "AUC", "gauc": "GAUC"}  # display names; any other metric shows as it is named


def fmt(pair: list[float | None] | None, digits: int = 4) -> str:
    if not pair:
        return "—"
    mean, std = pair
    if mean is None:  # no seed defines it
        return "undefined"
    if std is None:  # a single seed
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def metric_names(models: dict) -> list[str]:
    """Every test metric of the report, in the order the first model reports them."""
    names: list[str] = []
    for m in models.values():
        names += [k for k in m["test"] if k not in names]
    return names


def oracle_of(model: dict) -> dict[str, float]:
    """The oracle's values (``oracle_auc`` alone in reports written before ``oracle``)."""
    oracle = model.get("oracle")
    if oracle is None and model.get("oracle_auc") is not None:
        oracle = {"auc": model["oracle_auc"]}
    return oracle or {}


def gap(model: dict, name: str) -> str:
    oracle = oracle_of(model).get(name)
    mean = (model["test"].get(name) or [None])[0]
    if oracle is None or mean is None:
        return "—"
    lower = (model.get("modes") or {}).get(name) == "min"
    return f"{(mean - oracle) if lower else (oracle - mean):.4f}"


def table(report: dict) -> list[str]:
    models = report["models"]
    names = metric_names(models)
    oracle: dict[str, float] = {}
    for m in models.values():
        for k, v in oracle_of(m).items():
            oracle.setdefault(k, v)
    gaps = [k for k in names if k in oracle]
    head = ["model", "seeds", *(f"test {NAMES.get(k, k)}" for k in names)]
    head += ["train samples/s", "params"]
    head += [
        "gap to oracle" if len(gaps) == 1 else f"{NAMES.get(k, k)} gap to oracle" for k in gaps
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for name, m in models.items():
        speed = (m.get("perf") or {}).get("train_samples_per_sec")
        row = [
            name,
            str(len(m["seeds"])),
            *(fmt(m["test"].get(k)) for k in names),
            f"{speed[0]:,.0f}" if speed and speed[0] is not None else "—",
            f"{m['params']:,}" if m.get("params") else "—",
            *(gap(m, k) for k in gaps),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if oracle:
        values = ", ".join(f"{NAMES.get(k, k)} {v:.4f}" for k, v in oracle.items())
        lines += ["", f"Oracle test values (the data's generating process): {values}"]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare_dir", type=Path, help="a `recbench compare` output directory")
    args = ap.parse_args()
    path = args.compare_dir / "report.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass the output directory of a `recbench compare`")
    report = json.loads(path.read_text())
    print(f"<!-- {report['command']} -->")
    print("\n".join(table(report)))


if __name__ == "__main__":
    main()
