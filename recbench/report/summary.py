"""Per-model summaries over seeds and per-edge comparisons (child against each parent).

A model's test metrics are the mean and standard deviation over its seeds of the values each
record defines; undefined values (None or NaN, with the task's reason in ``undefined``) are left
out and listed. An edge compares the record's primary metric: the mean delta over seeds, the
spread of the per-seed deltas, and a paired bootstrap of the seed-averaged predictions (per-unit
terms, for a metric that is a mean over units) over the test units both models share (rows or
users, as the task's record says).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recbench.report.bootstrap import (
    BOOTSTRAP_METRICS,
    UNIT_KINDS,
    Interval,
    _interval,
    bootstrap_metric,
    full_metric,
)
from recbench.report.lineage import family_of, lineage_edges, parents_of, rule_of, title_of
from recbench.report.record import (
    MISSING,
    bootstrap_kind,
    bootstrap_unit,
    metric_mode,
    metric_value,
    number,
    oracle_values,
    primary_metric,
    task_metrics,
    undefined_reason,
)
from recbench.results import moved_away

GAIN, LOSS, UNCLEAR = "#1a9850", "#d73027", "#9a9a9a"
PERF_KEYS = (
    ("train_samples_per_sec", "train samples/s"),
    ("step_ms", "step ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("wall_seconds", "wall s"),
)


def _mean_std(values: Sequence[float | None]) -> tuple[float, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return math.nan, None
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None


@dataclass
class ModelSummary:
    model: str
    title: str
    family: str
    parents: tuple[str, ...]
    task: str | None
    primary: str
    mode: str
    seeds: list[int]
    metrics: dict[str, tuple[float, float | None]]  # test metric → (mean, std over seeds)
    params: int | None
    perf: dict[str, tuple[float, float | None]]
    run_dirs: list[str]
    modes: dict[str, str] = field(default_factory=dict)  # metric → max | min
    kinds: dict[str, str | None] = field(default_factory=dict)  # metric → bootstrap recipe
    counts: dict[str, int] = field(default_factory=dict)  # metric → seeds that define it
    undefined: dict[str, list[str]] = field(default_factory=dict)  # metric → "seed 2: why"
    oracle: dict[str, float] = field(default_factory=dict)  # metric → oracle's, mean over seeds
    bootstrap_unit: str = "row"
    partial: list[str] = field(default_factory=list)  # "seed 1: 256 of 2,847 test rows"

    @property
    def oracle_auc(self) -> float | None:
        return self.oracle.get("auc")


@dataclass
class EdgeSummary:
    parent: str
    child: str
    rule: str
    metric: str
    mode: str
    delta: float | None = None  # mean over seeds of child − parent (test)
    spread: float | None = None  # std over seeds of the per-seed deltas, seeds paired by value
    interval: Interval | None = None  # seed-averaged scores, paired bootstrap over units
    note: str = ""  # why there is no delta or no interval
    verdict: str = "n/a"  # gain | loss | within noise | no paired test | n/a
    unit: str = "row"  # what the bootstrap resamples: row | user
    units: int | None = None  # how many units both models share
    seeds: str = ""  # when the two have different seeds: the shared ones every figure uses

    @property
    def colour(self) -> str:
        if self.verdict == "gain":
            return GAIN
        if self.verdict == "loss":
            return LOSS
        if self.verdict == "no paired test" and self.delta is not None:
            better = self.delta > 0 if self.mode == "max" else self.delta < 0
            return GAIN if better else LOSS
        return UNCLEAR


def seed_values(records: Sequence[Mapping[str, Any]], name: str) -> dict[int, float | None]:
    """Seed → the test value of ``name`` each record defines (None where it is undefined)."""
    return {
        int(r["seed"]): number(metric_value(r.get("test"), name)) for r in records if "seed" in r
    }


def _oracle_means(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """The oracle's value of each metric over the model's seeds: the mean over the seeds that
    define the model's own value (so its gap to the oracle is over the same seeds), else over
    every seed that has one. A task's oracle can differ by seed and by run (the RL task's scores
    the requests each policy served)."""
    out: dict[str, float] = {}
    for k in names:
        pairs = [
            (oracle_values(r, [k]).get(k), number(metric_value(r.get("test"), k))) for r in records
        ]
        values = [o for o, v in pairs if o is not None and v is not None] or [
            o for o, _ in pairs if o is not None
        ]
        if values:
            same = all(v == values[0] for v in values)
            out[k] = values[0] if same else float(np.mean(values))
    return out


def summarise_model(model: str, records: Sequence[Mapping[str, Any]]) -> ModelSummary:
    first = records[0]
    names = task_metrics(first)
    metrics: dict[str, tuple[float, float | None]] = {}
    counts: dict[str, int] = {}
    undefined: dict[str, list[str]] = {}
    for k in names:
        values = []
        for r in records:
            raw = metric_value(r.get("test"), k, MISSING)
            v = number(raw)
            why = undefined_reason(r, "test", k)
            if v is not None:
                values.append(v)
            elif why is not None or raw is not MISSING:  # present but None or NaN: undefined
                undefined.setdefault(k, []).append(
                    f"seed {r.get('seed')}: {why or 'no value recorded'}"
                )
        metrics[k] = _mean_std(values)
        counts[k] = len(values)
    perf = {
        k: _mean_std([number((r.get("perf") or {}).get(k)) for r in records]) for k, _ in PERF_KEYS
    }
    oracle = _oracle_means(records, names)
    partial = [
        f"seed {r.get('seed')}: {c['tested']:,} of {c['of']:,} test {c['unit']}s"
        for r in records
        if (c := r.get("test_coverage") or {}).get("partial")
    ]
    return ModelSummary(
        model=model,
        title=title_of(model),
        family=family_of(model),
        parents=parents_of(model),
        task=first.get("task"),
        primary=primary_metric(first),
        mode=metric_mode(first, primary_metric(first)),
        seeds=sorted(int(r["seed"]) for r in records),
        metrics=metrics,
        params=first.get("params"),
        perf=perf,
        run_dirs=[str(r.get("run_dir")) for r in records],
        modes={k: metric_mode(first, k) for k in names},
        kinds={k: bootstrap_kind(first, k) for k in names},
        counts=counts,
        undefined=undefined,
        oracle=oracle,
        bootstrap_unit=bootstrap_unit(first),
        partial=partial,
    )


# ---------------------------------------------------------------------------- predictions


def _load_predictions(
    records: Sequence[Mapping[str, Any]], metric: str, kind: str
) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], str]:
    """Each run's saved scores for ``metric`` (per-unit values, or logits with labels)."""
    loaded: list[tuple[np.ndarray, np.ndarray | None]] = []
    for r in records:
        path = Path(str(r.get("run_dir"))) / "predictions.npz"
        if not path.exists():
            return [], f"no predictions.npz in {r.get('run_dir')}"
        if why := moved_away(r):
            return [], why
        with np.load(path) as z:
            if kind in UNIT_KINDS:
                key = f"unit__{metric}"
                if key not in z.files:
                    return [], f"no {key} in {path}"
                loaded.append((np.asarray(z[key], dtype=np.float64), None))
            elif "logits" not in z.files or "label" not in z.files:
                return [], f"no logits and labels in {path}"
            else:
                loaded.append((np.asarray(z["logits"], dtype=np.float64), np.asarray(z["label"])))
    return loaded, ""


def _seed_averaged(
    records: Sequence[Mapping[str, Any]], metric: str, kind: str
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Per-unit score averaged over a model's seeds (seeds that leave ``metric`` undefined are
    left out), and the labels (None for per-unit values); or why not."""
    defined = [r for r in records if number(metric_value(r.get("test"), metric)) is not None]
    loaded, why = _load_predictions(defined, metric, kind)
    if not loaded:
        return None, None, why or f"test {metric} undefined in every seed"
    first, label = loaded[0]
    if any(len(s) != len(first) for s, _ in loaded):
        return None, None, "seeds of one model saw different test units"
    if label is not None and any(not np.array_equal(lab, label) for _, lab in loaded):
        return None, None, "seeds of one model saw different test rows"
    score = BOOTSTRAP_METRICS[kind].score
    return np.mean([score(s) for s, _ in loaded], axis=0), label, ""


def _data_key(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The prepared-data key all of a model's seeds share, else None."""
    keys = {(r.get("data") or {}).get("key") for r in records}
    return str(keys.pop()) if len(keys) == 1 and None not in keys else None


@dataclass
class _Group:
    boot: dict[str, np.ndarray]  # model → metric on each resample
    point: dict[str, float]  # model → metric on all units
    why: dict[str, str]  # model → why it has no predictions
    units: int | None = None  # units resampled


def _bootstrap_group(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    members: Sequence[str],
    metric: str,
    kind: str,
    resamples: int,
    seed: int,
) -> _Group:
    scores: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    n: int | None = None
    why: dict[str, str] = {}
    for m in members:
        s, lab, reason = _seed_averaged(runs[m], metric, kind)
        if s is None:
            why[m] = reason
        elif n is not None and len(s) != n:
            why[m] = "its test units differ from the other models'"
        elif labels is not None and not np.array_equal(lab, labels):
            why[m] = "its test rows differ from the other models'"
        else:
            scores[m], labels, n = s, lab, len(s)
    if not scores:
        return _Group({}, {}, why)
    boot = bootstrap_metric(scores, labels, kind, resamples, seed)
    point = {m: full_metric(s, labels, kind) for m, s in scores.items()}
    return _Group(boot, point, why, n)


# ---------------------------------------------------------------------------- edges


def summarise_edges(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    models: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[EdgeSummary]:
    """Every lineage edge among ``models``: mean delta over seeds, its seed spread, and a paired
    bootstrap interval over the test units the two models share."""
    edges: list[EdgeSummary] = []
    for parent, child in lineage_edges(models):
        rc, rp = runs.get(child) or [], runs.get(parent) or []
        ref = (rc or rp or [{}])[0]
        metric = primary_metric(ref)
        mode = metric_mode(ref, metric) if ref else "max"
        e = EdgeSummary(parent, child, rule_of(child), metric, mode, unit=bootstrap_unit(ref))
        edges.append(e)
        if not rc or not rp:
            e.note = f"no finished runs of {child if not rc else parent}"
            continue
        if rp[0].get("primary_metric") != rc[0].get("primary_metric"):
            e.note = "parent and child report different primary metrics"
            continue
        vc, vp = seed_values(rc, metric), seed_values(rp, metric)
        if set(vc) != set(vp):  # a killed compare or a failed seed: compare like with like
            shared = sorted(set(vc) & set(vp))
            e.seeds = (
                f"seeds {shared} only: {child} has {sorted(vc)}, {parent} {sorted(vp)}"
                if shared
                else ""
            )
            if not shared:
                e.note = f"no seed in common ({child}: {sorted(vc)}, {parent}: {sorted(vp)})"
                continue
            vc, vp = {s: vc[s] for s in shared}, {s: vp[s] for s in shared}
        blank = [m for m, v in ((child, vc), (parent, vp)) if all(x is None for x in v.values())]
        if blank:  # on the seeds both have (``seeds`` says which when they differ)
            e.note = f"test {metric} undefined for {' and '.join(blank)}"
            continue
        e.delta = _mean_std(list(vc.values()))[0] - _mean_std(list(vp.values()))[0]
        paired = [
            vc[s] - vp[s]
            for s in sorted(set(vc) & set(vp))
            if vc[s] is not None and vp[s] is not None
        ]
        e.spread = _mean_std(paired)[1]

    # one bootstrap per group of models that share the same test units (same prepared data)
    # and resample the metric the same way, so a parent's resampled metrics are computed once
    # for all its children
    groups: dict[tuple[str, str, str], _Group] = {}
    for e in edges:
        if e.delta is None or e.note:
            continue
        kc, kp = _data_key(runs[e.child]), _data_key(runs[e.parent])
        if kc is None or kc != kp:
            e.note = "test rows not shared (different prepared data)"
            e.verdict = "no paired test"
            continue
        kind = bootstrap_kind(runs[e.child][0], e.metric)
        same = kind == bootstrap_kind(runs[e.parent][0], e.metric) and e.unit == bootstrap_unit(
            runs[e.parent][0]
        )
        if kind not in BOOTSTRAP_METRICS or not same:
            e.note = (
                f"no bootstrap recipe for {e.metric}"
                if kind not in BOOTSTRAP_METRICS
                else f"parent and child resample {e.metric} differently"
            )
            e.verdict = "no paired test"
            continue
        if e.seeds:  # the seeds both have, bootstrapped on their own
            both = set(seed_values(runs[e.child], e.metric)) & set(
                seed_values(runs[e.parent], e.metric)
            )
            sub = {m: [r for r in runs[m] if int(r["seed"]) in both] for m in (e.child, e.parent)}
            g = _bootstrap_group(sub, [e.child, e.parent], e.metric, kind, resamples, seed)
        else:
            gk = (kc, e.metric, kind)
            if gk not in groups:
                members = [
                    m
                    for m, recs in runs.items()
                    if recs
                    and _data_key(recs) == kc
                    and bootstrap_kind(recs[0], e.metric) == kind
                    and bootstrap_unit(recs[0]) == e.unit
                ]
                groups[gk] = _bootstrap_group(runs, members, e.metric, kind, resamples, seed)
            g = groups[gk]
        if e.child not in g.boot or e.parent not in g.boot:
            e.note = g.why.get(e.child) or g.why.get(e.parent) or "predictions missing"
            e.verdict = "no paired test"
            continue
        e.units = g.units
        e.interval = _interval(
            g.boot[e.child] - g.boot[e.parent], g.point[e.child] - g.point[e.parent], level
        )
        lo, hi = e.interval.low, e.interval.high
        if not e.interval.resamples:
            e.interval = None
            e.note = f"{e.metric} is undefined on every resample"
            e.verdict = "no paired test"
        elif lo > 0 or hi < 0:
            e.verdict = "gain" if (lo > 0) == (e.mode == "max") else "loss"
        else:
            e.verdict = "within noise"
    return edges


__all__ = [
    "GAIN",
    "LOSS",
    "PERF_KEYS",
    "UNCLEAR",
    "EdgeSummary",
    "ModelSummary",
    "summarise_edges",
    "summarise_model",
    "seed_values",
]
