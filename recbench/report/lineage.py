"""Where each model sits in the lineage graph: parents, family, title and rule (variants such as
``din_dice`` hang under their base node), the edges among a set of models, and their grid layout
(generation by the longest chain of parents, rows ordered for few crossings).
"""

from __future__ import annotations

from collections.abc import Sequence
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


def variant_base(model: str) -> str | None:
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
    base = variant_base(model)
    return (base,) if base else ()


def family_of(model: str) -> str:
    if model in BY_MODEL:
        return BY_MODEL[model].family
    base = variant_base(model)
    return BY_MODEL[base].family if base else "other"


def title_of(model: str) -> str:
    if model in BY_MODEL:
        return BY_MODEL[model].title
    base = variant_base(model)
    if base:
        return f"{BY_MODEL[base].title} ({model[len(base) + 1 :].replace('_', ' ')})"
    return model


def rule_of(model: str) -> str:
    if model in BY_MODEL:
        return BY_MODEL[model].rule
    return "variant" if variant_base(model) else "-"


def lineage_edges(models: Sequence[str]) -> list[tuple[str, str]]:
    """(parent, child) for every parent of every model that is itself in ``models``."""
    keep = set(models)
    return [(p, m) for m in models for p in parents_of(m) if p in keep]


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


__all__ = [
    "FAMILY_COLOURS",
    "FAMILY_ORDER",
    "Point",
    "family_of",
    "layout",
    "lineage_edges",
    "parents_of",
    "rule_of",
    "title_of",
]
