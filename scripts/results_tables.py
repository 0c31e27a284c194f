"""The docs/results.md table of one compare report, in Markdown.

    recbench compare lineage=ctr dataset=movielens-100k seeds=3 report_only=true
    python scripts/results_tables.py outputs/compare/<time>_ctr_movielens-100k

Reads the ``report.json`` that `recbench compare` (or its ``report_only`` rebuild) wrote and
prints one row per model: mean ± std over seeds of the test metrics, train samples/s, parameter
count and, on synthetic data, the gap to the oracle AUC.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(pair: list[float] | None, digits: int = 4) -> str:
    if not pair:
        return "—"
    mean, std = pair
    if std is None:  # a single seed
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(report: dict) -> list[str]:
    models = report["models"]
    oracle = next((m.get("oracle_auc") for m in models.values() if m.get("oracle_auc")), None)
    head = "| model | seeds | test AUC | test GAUC | test logloss | train samples/s | params |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if oracle:
        head += " gap to oracle |"
        rule += "---:|"
    lines = [head, rule]
    for name, m in models.items():
        test = m["test"]
        speed = (m.get("perf") or {}).get("train_samples_per_sec")
        row = [
            name,
            str(len(m["seeds"])),
            fmt(test.get("auc")),
            fmt(test.get("gauc")),
            fmt(test.get("logloss")),
            f"{speed[0]:,.0f}" if speed else "—",
            f"{m['params']:,}" if m.get("params") else "—",
        ]
        if oracle:
            row.append(f"{oracle - test['auc'][0]:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    if oracle:
        lines += ["", f"Oracle test AUC (the planted click probabilities): {oracle:.4f}"]
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
