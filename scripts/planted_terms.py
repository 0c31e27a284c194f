"""How much of each planted term of the synthetic world every model of a compare picked up.

    recbench compare lineage=sequence dataset=synthetic seeds=3 report_only=true
    python scripts/planted_terms.py outputs/compare/<time>_sequence_synthetic

For each model and seed, the test logits of ``predictions.npz`` against the planted parts of the
true click logit (``recbench.planted``): the partial correlation with each part given the
others, then mean ± std over seeds as a Markdown table. The test rows are rebuilt from the
world's seed and checked against the run's labels and the prepared oracle before use.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from recbench.data.pipeline import prepare
from recbench.planted import TERMS, capture, planted_terms, split_frame


def terms_of(run_dir: Path, cache: dict) -> dict[str, np.ndarray]:
    dataset = OmegaConf.load(run_dir / ".hydra" / "config.yaml").dataset
    key = json.dumps(OmegaConf.to_container(dataset, resolve=True), sort_keys=True)
    if key not in cache:
        frame = split_frame(dataset)
        oracle = prepare(dataset, log=lambda *_: None).splits["test"]["oracle"].numpy()
        if not np.allclose(frame["oracle_p"].to_numpy().astype(np.float32), oracle):
            raise SystemExit(f"{run_dir}: rebuilt test rows do not match the prepared ones")
        cache[key] = (frame["label"].to_numpy(), planted_terms(frame))
    return cache[key]


def fmt(values: list[float]) -> str:
    values = [v for v in values if v == v]  # NaN: the term is switched off in this world
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare_dir", type=Path, help="a `recbench compare` output directory")
    args = ap.parse_args()
    path = args.compare_dir / "report.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass the output directory of a `recbench compare`")
    report = json.loads(path.read_text())
    cache: dict = {}
    print("| model | seeds | " + " | ".join(t.replace("_", "-") for t in TERMS) + " |")
    print("|---|---:|" + "---:|" * len(TERMS))
    for model, summary in report["models"].items():
        per_term: dict[str, list[float]] = {t: [] for t in TERMS}
        for run_dir in map(Path, summary.get("run_dirs") or []):
            labels, terms = terms_of(run_dir, cache)
            with np.load(run_dir / "predictions.npz") as z:
                if not np.array_equal(z["label"], labels.astype(z["label"].dtype)):
                    raise SystemExit(f"{run_dir}: predictions are not in the test rows' order")
                for t, v in capture(z["logits"], terms).items():
                    per_term[t].append(v)
        seeds = len(summary.get("run_dirs") or [])
        print(f"| {model} | {seeds} | " + " | ".join(fmt(per_term[t]) for t in TERMS) + " |")


if __name__ == "__main__":
    main()
