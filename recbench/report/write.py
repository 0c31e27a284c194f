"""Writing a report: ``report.md``, a self-contained ``report.html``, ``report.json``,
``lineage.png`` and ``lineage.svg`` from finished run records (``recbench.results``) and the
``predictions.npz`` beside each. Nothing here trains or reads configs, so a report can be rebuilt
from the store.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recbench.report.bootstrap import UNIT_KINDS
from recbench.report.figure import draw_lineage
from recbench.report.record import UNIT_WORDS, unit_words
from recbench.report.summary import EdgeSummary, ModelSummary, summarise_edges, summarise_model
from recbench.report.tables import (
    PARTLY,
    Table,
    cost_table,
    edge_table,
    error_line,
    metric_table,
    oracle_names,
    oracle_table,
    oracle_text,
    oracle_varies,
    partial_notes,
    stale_table,
    sweep_table,
    undefined_notes,
)

FAILED = "failed"  # a record's status when its run did not finish (recbench.results.FAILED)


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
    store_problems: list[str] = field(default_factory=list)  # unreadable store lines
    resamples: int = 1000
    bootstrap_seed: int = 0
    level: float = 0.95


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
    "{averaged} with a percentile interval from a paired bootstrap over {over} "
    "({n} resamples, seed {seed}; both models see the same resampled {units}). The interval "
    "covers the sampling of {units}, not training randomness: read it beside the seed spread. "
    "The verdict (and the edge colour in the graph) follows the interval. Seeds that leave the "
    "metric undefined are left out of every delta."
)
SWEEPS_TEXT = (
    "Over the store's multirun (-m) records of these models on this dataset, the trial with the "
    "best validation primary metric."
)


@dataclass
class _Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    table: Table | None = None
    after: list[str] = field(default_factory=list)  # notes below the table
    code: list[str] = field(default_factory=list)  # preformatted blocks
    image: bool = False


def _units_text(edges: Sequence[EdgeSummary]) -> tuple[str, str]:
    """What the edges' bootstraps resampled: ("10,000 test rows", "test rows"), or the shared
    test units in general when no edge got an interval."""
    seen: list[tuple[int, str]] = []
    for e in edges:
        if e.units is not None and (e.units, e.unit) not in seen:
            seen.append((e.units, e.unit))
    kinds = list(dict.fromkeys(unit for _, unit in seen)) or list(
        dict.fromkeys(e.unit for e in edges)
    )
    units = " or ".join(unit_words(u) for u in kinds) or "test units"
    over = " or ".join(unit_words(u, n) for n, u in seen) or f"the shared {units}"
    return over, units


def _averaged_text(summaries: Sequence[ModelSummary], primary: str) -> str:
    """What the seed-averaged delta averages over seeds: the predictions, or for a metric that is
    a mean over units (per-user NDCG, per-row squared errors) the per-unit terms."""
    kind = next((s.kinds.get(primary) for s in summaries if s.kinds.get(primary)), None)
    if kind not in UNIT_KINDS:
        return "predictions"
    unit = summaries[0].bootstrap_unit
    return f"per-{UNIT_WORDS.get(unit, (unit,))[0].replace(' ', '-')} terms of {primary}"


def _sections(
    inp: ReportInput, summaries: list[ModelSummary], edges: list[EdgeSummary]
) -> list[_Section]:
    seeds = sorted({s for m in summaries for s in m.seeds})
    primary = summaries[0].primary if summaries else "auc"
    out: list[_Section] = []
    intro = [
        f"{len(summaries)} of {len(inp.models)} models finished on {inp.dataset}; "
        f"test metrics, mean ± std over seeds {seeds}."
    ]
    oracle = oracle_table(summaries)
    lift = [h for h in metric_table(summaries).headers if h.endswith("share of oracle lift")]
    varies = [k for k in oracle_names(summaries) if oracle_varies(summaries, k)]
    if oracle is not None:
        intro.append(
            "Oracle test values (the data's generating process; see the Oracle section): "
            + ", ".join(f"{k} {oracle_text(summaries, k)}" for k in oracle_names(summaries))
            + "."
        )
    if lift:
        intro.append("Share of oracle lift = (AUC − 0.5) / (oracle AUC − 0.5).")
    metrics = _Section("Test metrics", intro, metric_table(summaries))
    undefined = undefined_notes(summaries)
    if undefined:
        metrics.after = [
            f"Undefined values are left out of the means, standard deviations and deltas;{PARTLY} "
            "marks a mean over fewer seeds than the model ran."
        ] + [f"Undefined: {u}." for u in undefined]
    partial = partial_notes(summaries)
    if partial:
        metrics.after = [
            *metrics.after,
            "Partial tests: these runs scored only the first batches of the test split "
            "(trainer.limit_test_batches), not a sample of it; their figures and intervals "
            "describe those units alone and do not compare with a full test.",
            *(f"Partial: {p}." for p in partial),
        ]
    out.append(metrics)
    if oracle is not None:
        out.append(
            _Section(
                "Oracle",
                [
                    "The oracle scores the test units with the data's generating process. Gap = "
                    "how far each model's mean falls short of the oracle in the metric's better "
                    "direction."
                    + (
                        f" The oracle's {', '.join(varies)} differs between runs (it scores "
                        "each run's own test units, such as the requests a policy served): the "
                        "oracle row gives the range, and each model's gap is to the mean over its "
                        "own seeds, shown beside it."
                        if varies
                        else ""
                    )
                ],
                oracle,
            )
        )
    over, units = _units_text(edges)
    out.append(
        _Section(
            "Lineage deltas",
            [
                DELTAS_TEXT.format(
                    primary=primary,
                    averaged=_averaged_text(summaries, primary),
                    n=inp.resamples,
                    seed=inp.bootstrap_seed,
                    over=over,
                    units=units,
                )
            ],
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
        sec = _Section(
            "Failures", [f"{len(inp.failures)} run(s) failed (not in any mean or delta):"]
        )
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
    if inp.store_problems:
        out.append(
            _Section(
                "Store problems",
                [
                    f"{len(inp.store_problems)} line(s) of the results store are not one whole "
                    "record. Whole records found in them were read; a run whose record was lost "
                    "is not in this report, and a compare without report_only trains it again:"
                ],
                code=["\n".join(inp.store_problems)],
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


def _markdown(title: str, meta: str, sections: list[_Section]) -> str:
    parts = [f"# {title}", "", meta, ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        for t in s.text:
            parts += [t, ""]
        if s.table is not None:
            parts += [s.table.markdown(), ""]
        for t in s.after:
            parts += [t, ""]
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
        body += [f"<p class='note'>{html.escape(t)}</p>" for t in s.after]
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


def _finished_only(inp: ReportInput) -> tuple[dict[str, list[dict[str, Any]]], list[dict]]:
    """``inp.runs`` without failed records, and the failures with them (each listed once)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    failures = list(inp.failures)
    for m, records in inp.runs.items():
        runs[m] = [r for r in records if r.get("status") != FAILED]
        failures += [r for r in records if r.get("status") == FAILED and r not in failures]
    return runs, failures


def _pair(ms: tuple[float, float | None]) -> list[float | None]:
    """(mean, std) for JSON: an undefined mean is null, not NaN."""
    mean, std = ms
    return [mean if mean == mean else None, std]


def write_report(inp: ReportInput, out_dir: str | Path) -> dict[str, Any]:
    """Write report.md, report.html, report.json, lineage.png and lineage.svg into ``out_dir``;
    returns what report.json holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, failures = _finished_only(inp)
    inp = replace(inp, runs=runs, failures=failures)
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
                "task": s.task,
                "primary": s.primary,
                "mode": s.mode,
                "modes": s.modes,
                "test": {k: _pair(v) for k, v in s.metrics.items()},
                "undefined": s.undefined,
                "params": s.params,
                "oracle": s.oracle,
                "oracle_auc": s.oracle_auc,
                "bootstrap_unit": s.bootstrap_unit,
                "perf": {k: _pair(v) for k, v in s.perf.items()},
                "run_dirs": s.run_dirs,
            }
            for s in summaries
        },
        "edges": [
            {
                "parent": e.parent,
                "child": e.child,
                "metric": e.metric,
                "mode": e.mode,
                "delta": e.delta,
                "spread": e.spread,
                "verdict": e.verdict,
                "note": e.note,
                "seeds": e.seeds,
                "unit": e.unit,
                "units": e.units,
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
        "store_problems": list(inp.store_problems),
        "command": inp.command,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


__all__ = ["CSS", "ReportInput", "write_report"]
