"""Lineage reports: per-model tables over seeds, each model against each parent with a paired
bootstrap over the shared test rows, and the evolution graph drawn with those numbers.

Input is finished run records (``recbench.results``) and the ``predictions.npz`` beside each;
output is ``report.md``, a self-contained ``report.html``, ``report.json``, ``lineage.png`` and
``lineage.svg``. Nothing here trains or reads configs, so a report can be rebuilt from the store.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recbench.lineage import BY_MODEL

FAMILY_ORDER = (
    "core",
    "deeper",
    "crossing",
    "combination",
    "autoencoder",
    "attention / sequence",
    "NLP crossover",
    "RL crossover",
    "other",
)
FAMILY_COLOURS = {
    "core": "#4c72b0",
    "deeper": "#8172b3",
    "crossing": "#dd8452",
    "combination": "#55a868",
    "autoencoder": "#937860",
    "attention / sequence": "#c44e52",
    "NLP crossover": "#da8bc3",
    "RL crossover": "#8c8c8c",
    "other": "#999999",
}
GAIN, LOSS, UNCLEAR = "#1a9850", "#d73027", "#9a9a9a"
LOWER_IS_BETTER = ("logloss", "loss", "rmse", "mae", "mse")
PERF_KEYS = (
    ("train_samples_per_sec", "train samples/s"),
    ("step_ms", "step ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("wall_seconds", "wall s"),
)


# ---------------------------------------------------------------------------- lineage


def _variant_base(model: str) -> str | None:
    """A config not in the graph named ``<node>_<variant>`` (``din_dice``) is a variant of
    ``<node>``: the longest lineage node its name starts with."""
    parts = model.split("_")
    for k in range(len(parts) - 1, 0, -1):
        base = "_".join(parts[:k])
        if base in BY_MODEL:
            return base
    return None


def parents_of(model: str) -> tuple[str, ...]:
    if model in BY_MODEL:
        return BY_MODEL[model].parents
    base = _variant_base(model)
    return (base,) if base else ()


def family_of(model: str) -> str:
    if model in BY_MODEL:
        return BY_MODEL[model].family
    base = _variant_base(model)
    return BY_MODEL[base].family if base else "other"


def title_of(model: str) -> str:
    if model in BY_MODEL:
        return BY_MODEL[model].title
    base = _variant_base(model)
    if base:
        return f"{BY_MODEL[base].title} ({model[len(base) + 1 :].replace('_', ' ')})"
    return model


def rule_of(model: str) -> str:
    if model in BY_MODEL:
        return BY_MODEL[model].rule
    return "variant" if _variant_base(model) else "-"


def lineage_edges(models: Sequence[str]) -> list[tuple[str, str]]:
    """(parent, child) for every parent of every model that is itself in ``models``."""
    keep = set(models)
    return [(p, m) for m in models for p in parents_of(m) if p in keep]


# ---------------------------------------------------------------------------- tasks


def primary_mode(record: Mapping[str, Any]) -> str:
    """``max`` or ``min`` for the record's primary metric: the record's own word (the task's
    declared ``primary_mode``), else the metric's name."""
    if record.get("primary_mode") in ("max", "min"):
        return str(record["primary_mode"])
    return "min" if str(record.get("primary_metric")) in LOWER_IS_BETTER else "max"


def metric_mode(name: str, primary: str, mode: str) -> str:
    if name == primary:
        return mode
    return "min" if name in LOWER_IS_BETTER else "max"


def task_metrics(record: Mapping[str, Any]) -> list[str]:
    """The metrics a task reports, primary first: the record's list (the task's declared
    ``metrics``) when it has one, else its numeric test keys."""
    names = [str(k) for k in record.get("metrics") or ()]
    if not names:  # sorted: the store and metrics.json order keys differently
        names = sorted(
            k
            for k, v in (record.get("test") or {}).items()
            if isinstance(v, int | float) and k != "rows" and not k.endswith("_coverage")
        )
    primary = record.get("primary_metric")
    if primary in names:
        names.remove(primary)
    return ([primary] if primary else []) + names


# ---------------------------------------------------------------------------- bootstrap


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _prep_auc(scores: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first row of each tied score
    return {"order": order, "starts": starts, "pos": label[order] > 0.5}


def _auc_weighted(prep: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """AUC of every row of ``counts`` (B, n) as row weights: Mann-Whitney with ties counted
    half, from one sort shared by all resamples. (B,)"""
    c = counts[:, prep["order"]]
    p = c * prep["pos"]
    q = c - p
    if len(prep["starts"]) < c.shape[1]:  # tied scores: one column per distinct score
        p = np.add.reduceat(p, prep["starts"], axis=1)  # (B, distinct scores)
        q = np.add.reduceat(q, prep["starts"], axis=1)
    below = np.cumsum(q, axis=1) - q  # negative weight strictly below each score
    num = (p * (below + 0.5 * q)).sum(axis=1)
    den = p.sum(axis=1) * q.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _prep_loss(values: np.ndarray) -> dict[str, np.ndarray]:
    return {"loss": values}


def _mean_weighted(prep: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    return counts @ prep["loss"] / counts.sum(axis=1)


def _rmse_weighted(prep: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    return np.sqrt(_mean_weighted(prep, counts))


def _logloss_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


@dataclass(frozen=True)
class BootstrapMetric:
    """How a metric is computed on weighted rows. ``score`` maps one run's saved predictions to
    the per-row scores averaged over seeds (probabilities for binary metrics)."""

    score: Callable[[np.ndarray], np.ndarray]
    prepare: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    weighted: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


BOOTSTRAP_METRICS: dict[str, BootstrapMetric] = {
    "auc": BootstrapMetric(_sigmoid, _prep_auc, _auc_weighted),
    "logloss": BootstrapMetric(
        _sigmoid, lambda p, y: _prep_loss(_logloss_rows(p, y)), _mean_weighted
    ),
    "rmse": BootstrapMetric(np.asarray, lambda p, y: _prep_loss((p - y) ** 2), _rmse_weighted),
    "mae": BootstrapMetric(np.asarray, lambda p, y: _prep_loss(np.abs(p - y)), _mean_weighted),
}


def resample_counts(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """Row multiplicities of ``b`` bootstrap resamples of ``n`` rows. (b, n)

    Resample j is the rows ``rng.integers(0, n, size=n)`` of the j-th draw, so a loop that
    indexes rows with the same generator sees exactly the same resamples.
    """
    idx = np.stack([rng.integers(0, n, size=n) for _ in range(b)])
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_metric(
    scores: Mapping[str, np.ndarray],
    label: np.ndarray,
    metric: str,
    resamples: int = 1000,
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, np.ndarray]:
    """``metric`` of every model's scores on the same ``resamples`` resamples of the rows. Every
    model sees the same resamples, so differences between models are paired. {model: (B,)}"""
    spec = BOOTSTRAP_METRICS[metric]
    label = np.asarray(label, dtype=np.float64)
    n = len(label)
    preps = {m: spec.prepare(np.asarray(s, dtype=np.float64), label) for m, s in scores.items()}
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {m: [] for m in scores}
    for start in range(0, resamples, chunk):
        counts = resample_counts(rng, n, min(chunk, resamples - start))
        for m, prep in preps.items():
            out[m].append(spec.weighted(prep, counts))
    return {m: np.concatenate(v) for m, v in out.items()}


def full_metric(scores: np.ndarray, label: np.ndarray, metric: str) -> float:
    spec = BOOTSTRAP_METRICS[metric]
    label = np.asarray(label, dtype=np.float64)
    prep = spec.prepare(np.asarray(scores, dtype=np.float64), label)
    return float(spec.weighted(prep, np.ones((1, len(label))))[0])


@dataclass(frozen=True)
class Interval:
    delta: float  # child − parent on every row
    low: float
    high: float
    resamples: int


def paired_bootstrap(
    child: np.ndarray,
    parent: np.ndarray,
    label: np.ndarray,
    metric: str = "auc",
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Percentile interval of ``metric(child) − metric(parent)`` over resamples of the shared
    rows (the same rows for both in each resample). ``child`` and ``parent`` are per-row scores
    as the metric takes them: probabilities for auc and logloss, predictions for rmse and mae."""
    boot = bootstrap_metric({"child": child, "parent": parent}, label, metric, resamples, seed)
    return _interval(
        boot["child"] - boot["parent"],
        full_metric(child, label, metric) - full_metric(parent, label, metric),
        level,
    )


def _interval(deltas: np.ndarray, point: float, level: float) -> Interval:
    alpha = (1.0 - level) / 2
    finite = deltas[np.isfinite(deltas)]
    low, high = np.quantile(finite, [alpha, 1 - alpha]) if len(finite) else (np.nan, np.nan)
    return Interval(point, float(low), float(high), len(finite))


# ---------------------------------------------------------------------------- summaries


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
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
    oracle_auc: float | None
    run_dirs: list[str]


@dataclass
class EdgeSummary:
    parent: str
    child: str
    rule: str
    metric: str
    mode: str
    delta: float | None = None  # mean over seeds of child − parent (test)
    spread: float | None = None  # std over seeds of the per-seed deltas, seeds paired by value
    interval: Interval | None = None  # seed-averaged predictions, paired bootstrap over rows
    note: str = ""  # why there is no delta or no interval
    verdict: str = "n/a"  # gain | loss | within noise | no paired test | n/a

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


def summarise_model(model: str, records: Sequence[Mapping[str, Any]]) -> ModelSummary:
    first = records[0]
    primary = str(first.get("primary_metric") or "auc")
    names = task_metrics(first)
    metrics = {k: _mean_std([(r.get("test") or {}).get(k) for r in records]) for k in names}
    perf = {k: _mean_std([(r.get("perf") or {}).get(k) for r in records]) for k, _ in PERF_KEYS}
    oracle = next(
        (
            (r.get("oracle") or {}).get("auc")
            for r in records
            if (r.get("oracle") or {}).get("auc") is not None
        ),
        None,
    )
    return ModelSummary(
        model=model,
        title=title_of(model),
        family=family_of(model),
        parents=parents_of(model),
        task=first.get("task"),
        primary=primary,
        mode=primary_mode(first),
        seeds=sorted(int(r["seed"]) for r in records),
        metrics=metrics,
        params=first.get("params"),
        perf=perf,
        oracle_auc=oracle,
        run_dirs=[str(r.get("run_dir")) for r in records],
    )


def _load_predictions(records: Sequence[Mapping[str, Any]]) -> tuple[list, str]:
    loaded = []
    for r in records:
        path = Path(str(r.get("run_dir"))) / "predictions.npz"
        if not path.exists():
            return [], f"no predictions.npz in {r.get('run_dir')}"
        with np.load(path) as z:
            loaded.append((np.asarray(z["logits"], dtype=np.float64), np.asarray(z["label"])))
    return loaded, ""


def _seed_averaged(
    records: Sequence[Mapping[str, Any]], metric: str
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Per-row score averaged over a model's seeds, and the labels; or why not."""
    loaded, why = _load_predictions(records)
    if not loaded:
        return None, None, why
    label = loaded[0][1]
    if any(len(lab) != len(label) or not np.array_equal(lab, label) for _, lab in loaded):
        return None, None, "seeds of one model saw different test rows"
    score = BOOTSTRAP_METRICS[metric].score
    return np.mean([score(lg) for lg, _ in loaded], axis=0), label, ""


def _data_key(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The prepared-data key all of a model's seeds share, else None."""
    keys = {(r.get("data") or {}).get("key") for r in records}
    return str(keys.pop()) if len(keys) == 1 and None not in keys else None


@dataclass
class _Group:
    boot: dict[str, np.ndarray]  # model → metric on each resample
    point: dict[str, float]  # model → metric on all rows
    why: dict[str, str]  # model → why it has no predictions


def _bootstrap_group(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    members: Sequence[str],
    metric: str,
    resamples: int,
    seed: int,
) -> _Group:
    scores: dict[str, np.ndarray] = {}
    labels: np.ndarray | None = None
    why: dict[str, str] = {}
    for m in members:
        s, lab, reason = _seed_averaged(runs[m], metric)
        if s is None:
            why[m] = reason
        elif labels is not None and not np.array_equal(lab, labels):
            why[m] = "its test rows differ from the other models'"
        else:
            scores[m], labels = s, lab
    if not scores:
        return _Group({}, {}, why)
    boot = bootstrap_metric(scores, labels, metric, resamples, seed)
    return _Group(boot, {m: full_metric(s, labels, metric) for m, s in scores.items()}, why)


def summarise_edges(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    models: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[EdgeSummary]:
    """Every lineage edge among ``models``: mean delta over seeds, its seed spread, and a paired
    bootstrap interval over the test rows the two models share."""
    edges: list[EdgeSummary] = []
    for parent, child in lineage_edges(models):
        rc, rp = runs.get(child) or [], runs.get(parent) or []
        ref = (rc or rp or [{}])[0]
        metric = str(ref.get("primary_metric") or "auc")
        e = EdgeSummary(parent, child, rule_of(child), metric, primary_mode(ref) if ref else "max")
        if not rc or not rp:
            e.note = f"no finished runs of {child if not rc else parent}"
            edges.append(e)
            continue
        if rp[0].get("primary_metric") != rc[0].get("primary_metric"):
            e.note = "parent and child report different primary metrics"
            edges.append(e)
            continue
        vc = {int(r["seed"]): r["test"].get(metric) for r in rc}
        vp = {int(r["seed"]): r["test"].get(metric) for r in rp}
        e.delta = _mean_std(list(vc.values()))[0] - _mean_std(list(vp.values()))[0]
        paired = [
            vc[s] - vp[s]
            for s in sorted(set(vc) & set(vp))
            if vc[s] is not None and vp[s] is not None
        ]
        e.spread = _mean_std(paired)[1]
        edges.append(e)

    # one bootstrap per group of models that share the same test rows (same prepared data), so
    # a parent's resampled metrics are computed once for all its children
    groups: dict[tuple[str, str], _Group] = {}
    for e in edges:
        if e.delta is None or e.note:
            continue
        kc, kp = _data_key(runs[e.child]), _data_key(runs[e.parent])
        if kc is None or kc != kp:
            e.note = "test rows not shared (different prepared data)"
            e.verdict = "no paired test"
            continue
        if e.metric not in BOOTSTRAP_METRICS:
            e.note = f"no row-level bootstrap for {e.metric}"
            e.verdict = "no paired test"
            continue
        gk = (kc, e.metric)
        if gk not in groups:
            members = [m for m, recs in runs.items() if recs and _data_key(recs) == kc]
            groups[gk] = _bootstrap_group(runs, members, e.metric, resamples, seed)
        g = groups[gk]
        if e.child not in g.boot or e.parent not in g.boot:
            e.note = g.why.get(e.child) or g.why.get(e.parent) or "predictions missing"
            e.verdict = "no paired test"
            continue
        e.interval = _interval(
            g.boot[e.child] - g.boot[e.parent], g.point[e.child] - g.point[e.parent], level
        )
        lo, hi = e.interval.low, e.interval.high
        if lo > 0 or hi < 0:
            e.verdict = "gain" if (lo > 0) == (e.mode == "max") else "loss"
        else:
            e.verdict = "within noise"
    return edges


# ---------------------------------------------------------------------------- report input


@dataclass
class ReportInput:
    """What a report is made of. ``runs``: model → its finished records, one per seed."""

    lineage: str
    dataset: str
    models: list[str]
    runs: dict[str, list[dict[str, Any]]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    missing: list[tuple[str, int]] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)
    sweeps: list[dict[str, Any]] = field(default_factory=list)
    command: str = ""
    tensorboard: str = ""
    notes: list[str] = field(default_factory=list)
    resamples: int = 1000
    bootstrap_seed: int = 0
    level: float = 0.95


# ---------------------------------------------------------------------------- formatting


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}"


def _fmt_signed(v: float | None, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{round(v, digits) + 0.0:+.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def _pm(ms: tuple[float, float | None] | None, digits: int = 4) -> str:
    if ms is None or not math.isfinite(ms[0]):
        return "—"
    mean, std = ms
    return _fmt(mean, digits) + (f" ± {_fmt(std, digits)}" if std is not None else "")


def _big(ms: tuple[float, float | None] | None) -> str:
    if ms is None or not math.isfinite(ms[0]):
        return "—"
    return f"{ms[0]:,.0f}" + (f" ± {ms[1]:,.0f}" if ms[1] is not None else "")


def _arrow(name: str, primary: str, mode: str) -> str:
    return f"{name} {'↑' if metric_mode(name, primary, mode) == 'max' else '↓'}"


def _interval_text(e: EdgeSummary) -> str:
    if e.interval is None:
        return "—"
    return f"[{_fmt_signed(e.interval.low)}, {_fmt_signed(e.interval.high)}]"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [
            "| " + " | ".join(esc(h) for h in self.headers) + " |",
            "|" + "|".join("---" for _ in self.headers) + "|",
        ]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metric_table(summaries: Sequence[ModelSummary]) -> Table:
    names: list[str] = []
    for s in summaries:
        names += [k for k in s.metrics if k not in names]
    ref = summaries[0] if summaries else None
    headers = ["model", "family", "parents", "seeds"]
    headers += [_arrow(k, ref.primary, ref.mode) if ref else k for k in names]
    headers += ["params"]
    oracle = any(s.oracle_auc is not None for s in summaries) and "auc" in names
    if oracle:
        headers.append("share of oracle lift")
    rows = []
    for s in summaries:
        row = [s.model, s.family, ", ".join(s.parents) or "—", str(len(s.seeds))]
        row += [_pm(s.metrics.get(k)) for k in names]
        row.append(f"{s.params:,}" if s.params is not None else "—")
        if oracle:
            auc = s.metrics.get("auc", (math.nan, None))[0]
            ok = s.oracle_auc is not None and math.isfinite(auc) and s.oracle_auc > 0.5
            row.append(f"{(auc - 0.5) / (s.oracle_auc - 0.5):.1%}" if ok else "—")
        rows.append(row)
    return Table(headers, rows)


def cost_table(summaries: Sequence[ModelSummary]) -> Table:
    rows = [
        [
            s.model,
            *(_fmt(s.perf[k][0], 2) if k == "step_ms" else _big(s.perf[k]) for k, _ in PERF_KEYS),
        ]
        for s in summaries
    ]
    return Table(["model", *(label for _, label in PERF_KEYS)], rows)


def edge_table(edges: Sequence[EdgeSummary], level: float) -> Table:
    headers = [
        "child",
        "parent",
        "rule",
        "metric",
        "Δ mean over seeds",
        "seed spread",
        "Δ seed-averaged",
        f"{level:.0%} paired bootstrap",
        "verdict",
    ]
    rows = []
    for e in edges:
        rows.append(
            [
                e.child,
                e.parent,
                e.rule,
                e.metric,
                _fmt_signed(e.delta),
                f"± {_fmt(e.spread)}" if e.spread is not None else "—",
                _fmt_signed(e.interval.delta) if e.interval else "—",
                _interval_text(e),
                e.verdict + (f" ({e.note})" if e.note else ""),
            ]
        )
    return Table(headers, rows)


def sweep_table(records: Sequence[Mapping[str, Any]]) -> Table:
    """Best trial per model among sweep records (``-m`` runs), by the validation primary."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_model.setdefault(str(r.get("model")), []).append(r)
    rows = []
    for model, recs in by_model.items():
        primary = str(recs[0].get("primary_metric") or "auc")
        sign = 1.0 if primary_mode(recs[0]) == "max" else -1.0
        scored = [r for r in recs if (r.get("val") or {}).get(primary) is not None]
        if not scored:
            continue
        best = max(scored, key=lambda r: sign * float(r["val"][primary]))
        rows.append(
            [
                model,
                str(len(recs)),
                primary,
                _fmt(best["val"][primary]),
                _fmt((best.get("test") or {}).get(primary)),
                _overrides(best),
                str(best.get("run_dir")),
            ]
        )
    return Table(
        ["model", "trials", "metric", "best val", "its test", "overrides", "run dir"], rows
    )


def _overrides(record: Mapping[str, Any]) -> str:
    path = Path(str(record.get("run_dir"))) / ".hydra" / "overrides.yaml"
    if not path.exists():
        return "—"
    from omegaconf import OmegaConf

    items = OmegaConf.to_container(OmegaConf.load(path))
    return " ".join(str(o) for o in items or []) or "—"


# ---------------------------------------------------------------------------- figure


def _depths(models: Sequence[str], edges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Generation of each model: the longest chain of parents above it within ``models``."""
    parents: dict[str, list[str]] = {m: [] for m in models}
    for p, c in edges:
        parents[c].append(p)
    depth: dict[str, int] = {}

    def visit(m: str, seen: frozenset[str]) -> int:
        if m not in depth:
            ps = [p for p in parents[m] if p not in seen]
            depth[m] = 1 + max((visit(p, seen | {m}) for p in ps), default=-1)
        return depth[m]

    for m in models:
        visit(m, frozenset())
    return depth


Point = tuple[float, float]


def layout(
    models: Sequence[str], edges: Sequence[tuple[str, str]]
) -> tuple[dict[str, Point], dict[tuple[str, str], list[Point]]]:
    """Grid positions (generation, row) of every model, and the waypoints of every edge that
    skips generations.

    x is the generation (longest chain of parents). An edge that skips generations passes
    through a waypoint in each one it skips, and waypoints take a row like nodes do, so long
    edges never run through a box. Within a generation, nodes and waypoints are ordered by the
    mean row of what feeds them (fewer crossings), then by family.
    """
    depth = _depths(models, edges)
    n_gen = max(depth.values(), default=-1) + 1
    columns: list[list[Any]] = [[m for m in models if depth[m] == g] for g in range(n_gen)]
    feeds: dict[Any, list[Any]] = {m: [] for m in models}
    for p, c in edges:
        chain: list[Any] = [p, *((p, c, g) for g in range(depth[p] + 1, depth[c])), c]
        for a, b in zip(chain, chain[1:]):
            if b not in feeds:
                feeds[b] = []
                columns[b[2]].append(b)
            feeds[b].append(a)
    fam_rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    order = {m: i for i, m in enumerate(models)}
    feeds_into: dict[Any, list[Any]] = {}
    for b, As in feeds.items():
        for a in As:
            feeds_into.setdefault(a, []).append(b)

    def reindex(col: list[Any], row: dict[Any, float]) -> None:
        for i, item in enumerate(col):
            row[item] = (len(col) - 1) / 2 - i

    def place(col: list[Any], row: dict[Any, float], near: dict[Any, list[Any]]) -> None:
        def key(item: Any) -> tuple[float, int, int]:
            ys = [row[a] for a in near.get(item, ()) if a in row]
            bary = -float(np.mean(ys)) if ys else -row.get(item, 0.0)
            if isinstance(item, tuple):
                return bary, len(fam_rank) + 1, 0
            return bary, fam_rank.get(family_of(item), len(fam_rank)), order[item]

        col.sort(key=key)
        reindex(col, row)

    gen = {item: g for g, col in enumerate(columns) for item in col}
    segments = [(a, b) for b, As in feeds.items() for a in As]

    def cost(row: dict[Any, float]) -> float:
        """Crossings between segments of the same gap, plus a little for vertical length (a
        node with many children is pulled toward the middle of them)."""
        crossings = sum(
            1
            for i, (a1, b1) in enumerate(segments)
            for a2, b2 in segments[i + 1 :]
            if gen[a1] == gen[a2] and (row[a1] - row[a2]) * (row[b1] - row[b2]) < 0
        )
        return crossings + 0.3 * sum(abs(row[a] - row[b]) for a, b in segments)

    # barycentre sweeps down and up, keeping the cheapest order; then swaps of neighbours
    row: dict[Any, float] = {}
    for col in columns:
        place(col, row, feeds)
    best = (cost(row), [list(c) for c in columns])
    for _ in range(4):
        for col in columns[-2::-1]:
            place(col, row, feeds_into)
        for col in columns[1:]:
            place(col, row, feeds)
        best = min(best, (cost(row), [list(c) for c in columns]), key=lambda b: b[0])
    columns = best[1]
    row = {}
    for col in columns:
        reindex(col, row)
    current, improved = best[0], True
    while improved:
        improved = False
        for col in columns:
            for i in range(len(col) - 1):
                col[i], col[i + 1] = col[i + 1], col[i]
                reindex(col, row)
                c = cost(row)
                if c < current - 1e-9:
                    current, improved = c, True
                else:
                    col[i], col[i + 1] = col[i + 1], col[i]
                    reindex(col, row)
    pos = {m: (float(depth[m]), row[m]) for m in models}
    routes = {
        (p, c): [(float(g), row[(p, c, g)]) for g in range(depth[p] + 1, depth[c])]
        for p, c in edges
    }
    return pos, routes


LABEL_W, LABEL_H = 1.35, 0.4  # an edge label's extent in data units (6.5 pt, two lines)
NODE_W, NODE_H = 2.2, 0.8  # node box size in data units


def _label_spot(verts: Sequence[Point], placed: Sequence[Point], boxes: Sequence[Point]) -> Point:
    """Where an edge's label goes: on the last segment, nearer the child (edges leaving one
    parent fan apart there), at the first spot that overlaps no placed label and no node box;
    the least crowded spot when none is free."""
    (ax0, ay0), (ax1, ay1) = verts[-2], verts[-1]
    spots = [
        ((1 - t) * ax0 + t * ax1, (1 - t) * ay0 + t * ay1)
        for t in (0.62, 0.48, 0.76, 0.34, 0.88, 0.2)
    ]

    def clashes(x: float, y: float) -> int:
        n = sum(abs(x - px) < LABEL_W and abs(y - py) < LABEL_H for px, py in placed)
        n += sum(
            abs(x - bx) < (LABEL_W + NODE_W) / 2 and abs(y - by) < (LABEL_H + NODE_H) / 2
            for bx, by in boxes
        )
        return n

    return min(spots, key=lambda p: clashes(*p))  # min keeps the first of equal spots


def draw_lineage(
    summaries: Mapping[str, ModelSummary],
    edges: Sequence[EdgeSummary],
    models: Sequence[str],
    title: str,
    png: Path,
    svg: Path,
) -> None:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MplPath

    pos, routes = layout(models, [(e.parent, e.child) for e in edges])
    n_cols = int(max((x for x, _ in pos.values()), default=0)) + 1
    dx, dy = 3.8, 1.2  # data units between generations and between rows
    w, h = NODE_W, NODE_H
    xy = {m: (x * dx, y * dy) for m, (x, y) in pos.items()}
    ys = [y * dy for _, y in [*pos.values(), *(p for r in routes.values() for p in r)]] or [0.0]
    x_lo, x_hi = -w / 2 - 0.25, (n_cols - 1) * dx + w / 2 + 0.25
    y_lo, y_hi = min(ys) - h / 2 - 0.3, max(ys) + h / 2 + 0.3
    # one data unit is the same length on both axes, so boxes keep their shape at any size
    scale, top, bottom = 0.72, 0.55, 0.45  # inches per data unit; title and legend bands
    width = max(5.5, scale * (x_hi - x_lo))
    plot_h = scale * (y_hi - y_lo)
    height = plot_h + top + bottom
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes(
        (
            0.5 - scale * (x_hi - x_lo) / width / 2,
            bottom / height,
            scale * (x_hi - x_lo) / width,
            plot_h / height,
        )
    )
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_axis_off()
    fig.text(0.01, 1 - 0.08 / height, title, ha="left", va="top", fontsize=9)

    boxes = list(xy.values())
    placed: list[Point] = []
    for e in edges:
        (x0, y0), (x1, y1) = xy[e.parent], xy[e.child]
        # through each waypoint horizontally (its box-wide slot), then into the child
        verts = [(x0 + w / 2, y0)]
        for gx, gy in routes[(e.parent, e.child)]:
            verts += [(gx * dx - w / 2, gy * dy), (gx * dx + w / 2, gy * dy)]
        verts.append((x1 - w / 2, y1))
        style = "-" if e.interval is not None or e.delta is None else (0, (4, 2))
        arrow = FancyArrowPatch(
            path=MplPath(verts),
            arrowstyle="-|>",
            mutation_scale=11,
            color=e.colour,
            lw=1.6,
            linestyle=style,
            zorder=1,
        )
        ax.add_patch(arrow)
        if e.delta is None:
            continue
        label = _fmt_signed(e.delta)
        if e.interval is not None:
            label += "\n" + _interval_text(e)
        lx, ly = _label_spot(verts, placed, boxes)
        placed.append((lx, ly))
        ax.text(
            lx,
            ly,
            label,
            ha="center",
            va="center",
            fontsize=6.5,
            color=e.colour,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9},
        )

    for m, (x, y) in xy.items():
        fam = family_of(m)
        colour = FAMILY_COLOURS.get(fam, FAMILY_COLOURS["other"])
        s = summaries.get(m)
        box = FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            fc="white" if s else "#f2f2f2",
            ec=colour,
            lw=2.0,
            zorder=2,
        )
        ax.add_patch(box)
        name = title_of(m)
        ax.text(
            x,
            y + 0.14,
            name,
            ha="center",
            va="center",
            fontsize=8.5 * min(1.0, 20 / max(len(name), 1)),  # long names shrink to fit the box
            fontweight="bold",
            zorder=4,
        )
        if s is not None:
            line = f"{s.primary} {_pm(s.metrics.get(s.primary))}"
        else:
            line = "no finished run"
        ax.text(
            x,
            y - 0.17,
            line,
            ha="center",
            va="center",
            fontsize=7,
            zorder=4,
            color="black" if s else "#888888",
        )

    fams = [f for f in FAMILY_ORDER if any(family_of(m) == f for m in models)]
    handles = [Patch(fc="white", ec=FAMILY_COLOURS[f], lw=2, label=f) for f in fams]
    handles += [
        Line2D([], [], color=GAIN, lw=2, label="gain"),
        Line2D([], [], color=LOSS, lw=2, label="loss"),
        Line2D([], [], color=UNCLEAR, lw=2, label="interval includes 0"),
    ]
    fig.legend(
        handles=handles,
        loc="lower left",
        fontsize=7,
        ncol=len(handles),
        frameon=False,
        bbox_to_anchor=(0.0, 0.0),
        handlelength=1.6,
        columnspacing=1.0,
    )
    fig.savefig(png, dpi=150)
    fig.savefig(svg)


# ---------------------------------------------------------------------------- writing


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .55rem;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
code,pre{background:#f6f8fa;border-radius:4px}pre{padding:.6rem;overflow-x:auto;font-size:.8rem}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.85rem}
"""


DELTAS_TEXT = (
    "Child − parent in the primary test metric ({primary}): the mean over seeds, the standard "
    "deviation of the per-seed deltas (seeds paired by value), and the delta of the seed-averaged "
    "predictions with a percentile interval from a paired bootstrap over the shared test rows "
    "({n} resamples, seed {seed}; both models see the same resampled rows). The interval covers "
    "the sampling of test rows, not training randomness: read it beside the seed spread. The "
    "verdict (and the edge colour in the graph) follows the interval."
)
SWEEPS_TEXT = (
    "Over the store's multirun (-m) records of these models on this dataset, the trial with the "
    "best validation primary metric."
)


def stale_table(records: Sequence[Mapping[str, Any]]) -> Table:
    rows = [
        [
            str(r.get("model")),
            str(r.get("seed")),
            str((r.get("versions") or {}).get("recbench")),
            str(r.get("finished_at")),
            str(r.get("run_dir")),
        ]
        for r in records
    ]
    return Table(["model", "seed", "recbench", "finished", "run dir"], rows)


@dataclass
class _Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    table: Table | None = None
    code: list[str] = field(default_factory=list)  # preformatted blocks
    image: bool = False


def _sections(
    inp: ReportInput, summaries: list[ModelSummary], edges: list[EdgeSummary]
) -> list[_Section]:
    seeds = sorted({s for m in summaries for s in m.seeds})
    primary = summaries[0].primary if summaries else "auc"
    out: list[_Section] = []
    oracle = next((s.oracle_auc for s in summaries if s.oracle_auc is not None), None)
    intro = [
        f"{len(summaries)} of {len(inp.models)} models finished on {inp.dataset}; "
        f"test metrics, mean ± std over seeds {seeds}."
    ]
    if oracle is not None:
        intro.append(
            f"Oracle test AUC (the planted click probabilities): {oracle:.4f}. "
            "Share of oracle lift = (AUC − 0.5) / (oracle AUC − 0.5)."
        )
    out.append(_Section("Test metrics", intro, metric_table(summaries)))
    out.append(
        _Section(
            "Lineage deltas",
            [DELTAS_TEXT.format(primary=primary, n=inp.resamples, seed=inp.bootstrap_seed)],
            edge_table(edges, inp.level) if edges else None,
        )
    )
    if not edges:
        out[-1].text = ["No model here has a parent here, so there are no lineage edges."]
    out.append(_Section("Evolution graph", image=True))
    out.append(
        _Section(
            "Cost",
            ["Mean ± std over seeds; wall time includes data loading."],
            cost_table(summaries),
        )
    )
    if inp.failures:
        sec = _Section("Failures", [f"{len(inp.failures)} run(s) failed:"])
        sec.table = Table(
            ["model", "seed", "error (last line)"],
            [
                [str(f.get("model")), str(f.get("seed")), error_line(str(f.get("error") or ""))]
                for f in inp.failures
            ],
        )
        sec.code = [
            f"{f.get('model')} seed {f.get('seed')}:\n{f.get('error')}" for f in inp.failures
        ]
        out.append(sec)
    if inp.missing:
        out.append(
            _Section(
                "Missing",
                [
                    "No finished record in the results store for: "
                    + ", ".join(f"{m} seed {s}" for m, s in inp.missing)
                    + ". Run the compare without report_only to train them."
                ],
            )
        )
    if inp.stale:
        out.append(
            _Section(
                "Stale records (not used)",
                ["Written by another recbench version, so their numbers may come from other code:"],
                stale_table(inp.stale),
            )
        )
    if inp.sweeps:
        out.append(
            _Section(
                "Best sweep trial per model",
                [SWEEPS_TEXT],
                sweep_table(inp.sweeps),
            )
        )
    notes = list(inp.notes)
    if inp.tensorboard:
        notes.append(
            f"TensorBoard (curves and the HParams tab of every run): "
            f"tensorboard --logdir {inp.tensorboard}"
        )
    reproduce = _Section("Reproduce", notes)
    if inp.command:
        reproduce.code = [inp.command]
    out.append(reproduce)
    return out


# lines Hydra prints after the error itself
_HINTS = (
    "Set the environment variable HYDRA_FULL_ERROR",
    "full_key:",
    "object_type=",
    "See https://",
)


def error_line(text: str) -> str:
    """The line of a run's output that says what went wrong: the last one naming an error,
    skipping Hydra's hints; else the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_HINTS)] or lines
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or "error" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else ""


def _markdown(title: str, meta: str, sections: list[_Section]) -> str:
    parts = [f"# {title}", "", meta, ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        for t in s.text:
            parts += [t, ""]
        if s.table is not None:
            parts += [s.table.markdown(), ""]
        if s.image:
            parts += [
                "![lineage](lineage.png)",
                "",
                "Vector version: [lineage.svg](lineage.svg)",
                "",
            ]
        for c in s.code:
            parts += ["```", c, "```", ""]
    return "\n".join(parts)


def _html(title: str, meta: str, sections: list[_Section], png: bytes) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='note'>{html.escape(meta)}</p>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{html.escape(t)}</p>" for t in s.text]
        if s.table is not None:
            body.append(s.table.html())
        if s.image:
            data = base64.b64encode(png).decode()
            body.append(f"<img alt='lineage graph' src='data:image/png;base64,{data}'>")
        body += [f"<pre>{html.escape(c)}</pre>" for c in s.code]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_report(inp: ReportInput, out_dir: str | Path) -> dict[str, Any]:
    """Write report.md, report.html, report.json, lineage.png and lineage.svg into ``out_dir``;
    returns what report.json holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarise_model(m, inp.runs[m]) for m in inp.models if inp.runs.get(m)]
    by_model = {s.model: s for s in summaries}
    edges = summarise_edges(inp.runs, inp.models, inp.resamples, inp.bootstrap_seed, inp.level)
    title = f"recbench compare: lineage {inp.lineage} on {inp.dataset}"
    from recbench.results import code_version

    meta = (
        f"recbench {code_version()}, "
        f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"models: {', '.join(inp.models)}"
    )
    primary = summaries[0].primary if summaries else "auc"
    draw_lineage(
        by_model,
        edges,
        inp.models,
        f"{inp.lineage} on {inp.dataset}: test {primary}, mean ± std over seeds\n"
        f"edges: Δ child − parent (mean over seeds) "
        f"[{inp.level:.0%} paired bootstrap interval]",
        out / "lineage.png",
        out / "lineage.svg",
    )
    sections = _sections(inp, summaries, edges)
    (out / "report.md").write_text(_markdown(title, meta, sections))
    (out / "report.html").write_text(
        _html(title, meta, sections, (out / "lineage.png").read_bytes())
    )
    summary = {
        "lineage": inp.lineage,
        "dataset": inp.dataset,
        "models": {
            s.model: {
                "seeds": s.seeds,
                "primary": s.primary,
                "mode": s.mode,
                "test": {k: list(v) for k, v in s.metrics.items()},
                "params": s.params,
                "oracle_auc": s.oracle_auc,
                "perf": {k: list(v) for k, v in s.perf.items()},
                "run_dirs": s.run_dirs,
            }
            for s in summaries
        },
        "edges": [
            {
                "parent": e.parent,
                "child": e.child,
                "metric": e.metric,
                "delta": e.delta,
                "spread": e.spread,
                "verdict": e.verdict,
                "note": e.note,
                "interval": None
                if e.interval is None
                else {
                    "delta": e.interval.delta,
                    "low": e.interval.low,
                    "high": e.interval.high,
                    "resamples": e.interval.resamples,
                },
            }
            for e in edges
        ],
        "failures": [
            {
                "model": f.get("model"),
                "seed": f.get("seed"),
                "error": error_line(str(f.get("error") or "")),
            }
            for f in inp.failures
        ],
        "missing": [list(m) for m in inp.missing],
        "command": inp.command,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


__all__ = [
    "BOOTSTRAP_METRICS",
    "EdgeSummary",
    "Interval",
    "ModelSummary",
    "ReportInput",
    "bootstrap_metric",
    "draw_lineage",
    "full_metric",
    "layout",
    "lineage_edges",
    "paired_bootstrap",
    "parents_of",
    "primary_mode",
    "resample_counts",
    "summarise_edges",
    "summarise_model",
    "write_report",
]
