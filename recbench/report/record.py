"""What a run record says about its task's metrics: their names in report order, the direction of
each, how each is resampled for the paired bootstrap and over what units, undefined values and
oracle values. Dotted names (``sampled.hr@10``) read nested dicts of ``test``/``val``.

Records written before tasks declared ``metric_modes`` and ``bootstrap`` fall back on the metric's
name (``LOWER_IS_BETTER``) and on row-level recipes from the saved logits and labels
(``LEGACY_BOOTSTRAP``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

LOWER_IS_BETTER = ("logloss", "loss", "rmse", "mae", "mse")
LEGACY_BOOTSTRAP = ("auc", "logloss", "rmse", "mae")
UNIT_WORDS = {"row": ("test row", "test rows"), "user": ("user", "users")}
MISSING = object()  # a metric the record does not have at all (not even as undefined)


def metric_value(split: Any, name: str, default: Any = None) -> Any:
    """``split[name]``; a dotted name not stored flat reads nested dicts (``sampled.hr@10``)."""
    if not isinstance(split, Mapping):
        return default
    if name in split:
        return split[name]
    value: Any = split
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def number(value: Any) -> float | None:
    """``value`` as a finite float; None when it is undefined, NaN or not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def primary_metric(record: Mapping[str, Any]) -> str:
    return str(record.get("primary_metric") or "auc")


def primary_mode(record: Mapping[str, Any]) -> str:
    """``max`` or ``min`` for the record's primary metric: the record's own word (the task's
    declared ``primary_mode``), else the metric's name."""
    if record.get("primary_mode") in ("max", "min"):
        return str(record["primary_mode"])
    return "min" if str(record.get("primary_metric")) in LOWER_IS_BETTER else "max"


def metric_mode(record: Mapping[str, Any], name: str) -> str:
    """``max`` or ``min`` for ``name``: the record's ``metric_modes``, else (older records) the
    primary's mode for the primary and the metric's last name part for the others."""
    modes = record.get("metric_modes")
    if isinstance(modes, Mapping) and modes.get(name) in ("max", "min"):
        return str(modes[name])
    if name == record.get("primary_metric"):
        return primary_mode(record)
    base = name.split(".")[-1]
    return "min" if name in LOWER_IS_BETTER or base in LOWER_IS_BETTER else "max"


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


def bootstrap_kind(record: Mapping[str, Any], name: str) -> str | None:
    """How ``name`` is resampled (``auc``, ``logloss``, ``mean``, ``sqrt_mean`` or a legacy
    row recipe), or None when the record declares no recipe for it."""
    recipes = record.get("bootstrap")
    if isinstance(recipes, Mapping):
        kind = recipes.get(name)
        return str(kind) if kind else None
    return name if name in LEGACY_BOOTSTRAP else None


def bootstrap_unit(record: Mapping[str, Any]) -> str:
    """What the paired bootstrap resamples: ``row`` (test rows) or ``user``."""
    return str(record.get("bootstrap_unit") or "row")


def unit_words(unit: str, n: int | None = None) -> str:
    """``10,000 test rows``, ``943 users``, ``1 user``; the plural alone without ``n``."""
    one, many = UNIT_WORDS.get(unit, (unit, f"{unit}s"))
    if n is None:
        return many
    return f"{n:,} {one if n == 1 else many}"


def undefined_reason(record: Mapping[str, Any], split: str, name: str) -> str | None:
    reasons = record.get("undefined")
    if not isinstance(reasons, Mapping):
        return None
    why = reasons.get(f"{split}.{name}")
    return None if why is None else str(why)


def oracle_values(record: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The oracle's value of every metric in ``names`` that the record's ``oracle`` holds."""
    oracle = record.get("oracle")
    out = {}
    for name in names:
        v = number(metric_value(oracle, name))
        if v is not None:
            out[name] = v
    return out


__all__ = [
    "LEGACY_BOOTSTRAP",
    "LOWER_IS_BETTER",
    "MISSING",
    "bootstrap_kind",
    "bootstrap_unit",
    "metric_mode",
    "metric_value",
    "number",
    "oracle_values",
    "primary_metric",
    "primary_mode",
    "task_metrics",
    "undefined_reason",
    "unit_words",
]
