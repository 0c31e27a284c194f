"""Which planted term of the synthetic world a trained model has picked up.

The synthetic world's click logit is a sum of planted parts (``recbench.data.synthetic``), and
every row carries ablation oracles: the true probability with one part set to its mean. Their
logit differences give each part of each row (up to a constant)::

    pairwise     logit(p) − logit(p without the pairwise crosses)
    higher_order logit(p) − logit(p without the 3-way cross)
    drift        logit(p) − logit(p without the drift term)
    attention    logit(p) − logit(p without both history terms) − drift
    rest         logit(p) − all of the above (biases, b0)

``capture`` scores a model's test logits against one part: the partial correlation of the
logits with that part given all the other parts. 1 means the logits move with the part as the
truth does, 0 that they ignore it; AUC mixes every part into one number, this separates them (a
model can lose AUC on one part and still read another better than its rival). The measure is
linear: it sees the share of a part that the logits carry additively, which is how the truth
carries every part.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from recbench.data.pipeline import split_events

TERMS = ("pairwise", "higher_order", "attention", "drift")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def split_frame(dataset: DictConfig, split: int = 2) -> pl.DataFrame:
    """The rows of one split (0 train, 1 val, 2 test) of a synthetic dataset config, in the
    order of recbench's prepared tensors (and so of a run's ``predictions.npz``), with every
    oracle column. The world is generated again from its seed; nothing is read from disk."""
    raw = instantiate(dataset.adapter).load()
    if "oracle_p" not in raw.events.columns:
        raise ValueError(f"dataset {dataset.name!r} has no planted terms (not a synthetic world)")
    # the synthetic world has no history filter and no sampled negatives: the prepared rows of a
    # split are its source events in the pipeline's order
    return split_events(raw.events, dataset.split).filter(pl.col("split") == split)


def planted_terms(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Each planted part of each row's true click logit (module docstring), plus ``rest``."""
    full = _logit(frame["oracle_p"].to_numpy())

    def without(column: str) -> np.ndarray:
        return full - _logit(frame[column].to_numpy())

    terms = {
        "pairwise": without("oracle_p_no_pairwise"),
        "higher_order": without("oracle_p_no_higher_order"),
        "drift": without("oracle_p_no_drift"),
    }
    terms["attention"] = without("oracle_p_no_history") - terms["drift"]
    terms["rest"] = full - sum(terms[t] for t in TERMS)
    return terms


def _residual(y: np.ndarray, controls: np.ndarray) -> np.ndarray:
    x = np.column_stack([np.ones(len(y)), controls])
    return y - x @ np.linalg.lstsq(x, y, rcond=None)[0]


def capture(logits: np.ndarray, terms: dict[str, np.ndarray]) -> dict[str, float]:
    """Partial correlation of ``logits`` with each planted term given the other parts; a term
    that is constant on these rows (switched off in this world) gets NaN."""
    y = np.asarray(logits, dtype=np.float64)
    out = {}
    for name in TERMS:
        term = terms[name]
        if np.ptp(term) < 1e-9:
            out[name] = float("nan")
            continue
        others = [terms[t] for t in (*TERMS, "rest") if t != name and np.ptp(terms[t]) >= 1e-9]
        controls = np.column_stack(others)
        ry, rt = _residual(y, controls), _residual(term, controls)
        out[name] = float(np.dot(ry, rt) / np.sqrt(np.dot(ry, ry) * np.dot(rt, rt)))
    return out
