"""The report's tables (rows of plain strings, rendered as Markdown or HTML) and how numbers are
written in them: mean ± std over seeds, signed deltas, ``undefined`` for a value no seed defines.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbench.report.record import metric_value, number, primary_metric, primary_mode
from recbench.report.summary import PERF_KEYS, EdgeSummary, ModelSummary

UNDEFINED = "undefined"
PARTLY = " *"  # marks a mean over fewer seeds than the model ran: the others left it undefined


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


def _seconds_digits(v: float) -> int:
    """Decimals for a time in seconds: two significant digits below 10 s (0.42, 3.1), whole
    seconds from there on (12, 1,234)."""
    a = abs(v)
    if a == 0 or a >= 10:
        return 0
    digits = min(3, 1 - math.floor(math.log10(a)))
    if round(a, digits) >= 10 ** (2 - digits):  # 0.996 → 1.0, 9.96 → 10
        digits -= 1
    return max(digits, 0)


def _seconds(ms: tuple[float, float | None] | None) -> str:
    """A time in seconds, mean ± std, both to the mean's precision: a sub-second run reads
    0.42, never 0."""
    if ms is None or not math.isfinite(ms[0]):
        return "—"
    digits = _seconds_digits(ms[0])
    return f"{ms[0]:,.{digits}f}" + (f" ± {ms[1]:,.{digits}f}" if ms[1] is not None else "")


def _arrow(name: str, mode: str) -> str:
    return f"{name} {'↑' if mode == 'max' else '↓'}"


def cell(s: ModelSummary, name: str) -> str:
    """``name``'s mean ± std over the seeds that define it; ``undefined`` when none does."""
    if name in s.undefined and not s.counts.get(name):
        return UNDEFINED
    return _pm(s.metrics.get(name)) + (PARTLY if name in s.undefined else "")


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


def _names(summaries: Sequence[ModelSummary]) -> list[str]:
    names: list[str] = []
    for s in summaries:
        names += [k for k in s.metrics if k not in names]
    return names


def _first(summaries: Sequence[ModelSummary], attr: str, name: str, default: Any) -> Any:
    """``getattr(s, attr)[name]`` of the first summary that has it."""
    return next((getattr(s, attr)[name] for s in summaries if name in getattr(s, attr)), default)


def _lift_metrics(summaries: Sequence[ModelSummary], names: Sequence[str]) -> list[str]:
    """AUC-like metrics (chance level 0.5) with an oracle value: their share of oracle lift."""
    return [
        k
        for k in names
        if _first(summaries, "kinds", k, None) == "auc" and any(k in s.oracle for s in summaries)
    ]


def metric_table(summaries: Sequence[ModelSummary]) -> Table:
    names = _names(summaries)
    headers = ["model", "family", "parents", "seeds"]
    headers += [_arrow(k, _first(summaries, "modes", k, "max")) for k in names]
    headers += ["params"]
    lift = _lift_metrics(summaries, names)
    headers += [
        "share of oracle lift" if len(lift) == 1 else f"{k} share of oracle lift" for k in lift
    ]
    rows = []
    for s in summaries:
        row = [s.model, s.family, ", ".join(s.parents) or "—", str(len(s.seeds))]
        row += [cell(s, k) for k in names]
        row.append(f"{s.params:,}" if s.params is not None else "—")
        for k in lift:
            value, oracle = s.metrics.get(k, (math.nan, None))[0], s.oracle.get(k)
            ok = oracle is not None and math.isfinite(value) and oracle > 0.5
            row.append(f"{(value - 0.5) / (oracle - 0.5):.1%}" if ok else "—")
        rows.append(row)
    return Table(headers, rows)


def oracle_names(summaries: Sequence[ModelSummary]) -> list[str]:
    """The metrics some model's runs have an oracle value for, in the report's order."""
    return [k for k in _names(summaries) if any(k in s.oracle for s in summaries)]


def oracle_varies(summaries: Sequence[ModelSummary], name: str) -> bool:
    """Whether the models' runs disagree on the oracle's value of ``name`` (an oracle that scores
    what each run served, as the RL task's does)."""
    return len({s.oracle[name] for s in summaries if name in s.oracle}) > 1


def oracle_text(summaries: Sequence[ModelSummary], name: str) -> str:
    """The oracle's value of ``name``: one number when every model's runs agree, else the range
    of the models' values (each the mean over its own seeds)."""
    values = [s.oracle[name] for s in summaries if name in s.oracle]
    if not values:
        return "—"
    low, high = _fmt(min(values)), _fmt(max(values))
    return low if low == high else f"{low}–{high}"


def oracle_table(summaries: Sequence[ModelSummary]) -> Table | None:
    """Every metric the oracle has: its value, and each model's gap to it (positive: the model
    falls short of the oracle in the metric's better direction). Where the models' runs disagree
    on the oracle's value, each model's own (mean over its seeds) is a column of its own and its
    gap is to that."""
    names = oracle_names(summaries)
    if not names:
        return None
    varies = {k for k in names if oracle_varies(summaries, k)}
    headers = ["model"]
    for k in names:
        headers.append(_arrow(k, _first(summaries, "modes", k, "max")))
        if k in varies:
            headers.append(f"{k} oracle (its runs)")
        headers.append(f"{k} gap to oracle")
    rows = [["oracle"]]
    for k in names:
        rows[0] += [oracle_text(summaries, k), *(["—"] if k in varies else []), "—"]
    for s in summaries:
        row = [s.model]
        for k in names:
            mean, oracle = s.metrics.get(k, (math.nan, None))[0], s.oracle.get(k)
            gap = None
            if oracle is not None and math.isfinite(mean):
                gap = oracle - mean if s.modes.get(k, "max") == "max" else mean - oracle
            row.append(cell(s, k))
            if k in varies:
                row.append(_fmt(oracle))
            row.append(_fmt_signed(gap))
        rows.append(row)
    return Table(headers, rows)


def undefined_notes(summaries: Sequence[ModelSummary]) -> list[str]:
    """One line per model and metric with undefined test values, with the task's reasons."""
    return [
        f"{s.model} test {k}, " + "; ".join(whys)
        for s in summaries
        for k, whys in s.undefined.items()
    ]


def partial_notes(summaries: Sequence[ModelSummary]) -> list[str]:
    """One line per model whose runs tested only the first test batches
    (``trainer.limit_test_batches``), naming the seeds and how many units each scored."""
    return [f"{s.model}, " + "; ".join(s.partial) for s in summaries if s.partial]


def _perf_cell(key: str, ms: tuple[float, float | None]) -> str:
    if key == "step_ms":
        return _fmt(ms[0], 2)
    if key == "wall_seconds":
        return _seconds(ms)
    return _big(ms)


def cost_table(summaries: Sequence[ModelSummary]) -> Table:
    rows = [[s.model, *(_perf_cell(k, s.perf[k]) for k, _ in PERF_KEYS)] for s in summaries]
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
                e.verdict + "".join(f" ({x})" for x in (e.note, e.seeds) if x),
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
        primary = primary_metric(recs[0])
        sign = 1.0 if primary_mode(recs[0]) == "max" else -1.0
        scored = [(number(metric_value(r.get("val"), primary)), r) for r in recs]
        scored = [(v, r) for v, r in scored if v is not None]
        if not scored:
            continue
        value, best = max(scored, key=lambda vr: sign * vr[0])
        rows.append(
            [
                model,
                str(len(recs)),
                primary,
                _fmt(value),
                _fmt(number(metric_value(best.get("test"), primary))),
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


# lines Hydra prints after the error itself
_HINTS = (
    "Set the environment variable HYDRA_FULL_ERROR",
    "full_key:",
    "object_type=",
    "See https://",
)


def error_line(text: str) -> str:
    """The line of a run's output that says what went wrong: the last one naming an error,
    skipping Hydra's hints; else the last line. A heading that lists problems below it
    ("... has 2 problems; nothing was run:" then "- ..." lines) comes with them, joined by "; "."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_HINTS)] or lines
    entries: list[list[str]] = []  # a line, or a heading ending in ":" and the items below it
    for ln in lines:
        if ln.startswith("- ") and entries and entries[-1][0].endswith(":"):
            entries[-1].append(ln[2:])
        else:
            entries.append([ln])
    texts = [e[0] if len(e) == 1 else f"{e[0]} {'; '.join(e[1:])}" for e in entries]
    for entry, shown in zip(reversed(entries), reversed(texts), strict=True):
        if any("Error" in ln or "Exception" in ln or "error" in ln for ln in entry):
            return shown[:300] if len(entry) == 1 else shown[:600]
    return texts[-1][:300] if texts else ""


__all__ = [
    "Table",
    "cell",
    "cost_table",
    "edge_table",
    "error_line",
    "metric_table",
    "oracle_names",
    "oracle_table",
    "oracle_text",
    "oracle_varies",
    "stale_table",
    "sweep_table",
    "partial_notes",
    "undefined_notes",
]
