"""Lineage reports: per-model tables over seeds, each model against each parent with a paired
bootstrap over the shared test units, and the evolution graph drawn with those numbers.

Every task's metrics (names, directions, bootstrap recipes and units, undefined values, oracle
values) are learnt from the run records, so one report serves every task.

- ``record``: what a record says about its task's metrics;
- ``lineage``: parents, families and titles of models, the edges among them and their layout;
- ``bootstrap``: the paired bootstrap statistics;
- ``summary``: per-model summaries over seeds and per-edge comparisons;
- ``tables``: the report's tables and number formatting;
- ``figure``: the evolution graph;
- ``write``: report.md, report.html, report.json and the figure files.
"""

from recbench.report.bootstrap import (
    BOOTSTRAP_METRICS,
    UNIT_KINDS,
    BootstrapMetric,
    Interval,
    bootstrap_metric,
    full_metric,
    paired_bootstrap,
    resample_counts,
)
from recbench.report.figure import draw_lineage
from recbench.report.lineage import (
    FAMILY_COLOURS,
    FAMILY_ORDER,
    family_of,
    layout,
    lineage_edges,
    parents_of,
    rule_of,
    title_of,
)
from recbench.report.record import (
    LOWER_IS_BETTER,
    bootstrap_kind,
    bootstrap_unit,
    metric_mode,
    metric_value,
    primary_metric,
    primary_mode,
    task_metrics,
)
from recbench.report.summary import (
    GAIN,
    LOSS,
    PERF_KEYS,
    UNCLEAR,
    EdgeSummary,
    ModelSummary,
    summarise_edges,
    summarise_model,
)
from recbench.report.tables import (
    Table,
    cost_table,
    edge_table,
    error_line,
    metric_table,
    oracle_table,
    stale_table,
    sweep_table,
)
from recbench.report.write import CSS, ReportInput, write_report

__all__ = [
    "BOOTSTRAP_METRICS",
    "CSS",
    "FAMILY_COLOURS",
    "FAMILY_ORDER",
    "GAIN",
    "LOSS",
    "LOWER_IS_BETTER",
    "PERF_KEYS",
    "UNCLEAR",
    "UNIT_KINDS",
    "BootstrapMetric",
    "EdgeSummary",
    "Interval",
    "ModelSummary",
    "ReportInput",
    "Table",
    "bootstrap_kind",
    "bootstrap_metric",
    "bootstrap_unit",
    "cost_table",
    "draw_lineage",
    "edge_table",
    "error_line",
    "family_of",
    "full_metric",
    "layout",
    "lineage_edges",
    "metric_mode",
    "metric_table",
    "metric_value",
    "oracle_table",
    "paired_bootstrap",
    "parents_of",
    "primary_metric",
    "primary_mode",
    "resample_counts",
    "rule_of",
    "stale_table",
    "summarise_edges",
    "summarise_model",
    "sweep_table",
    "task_metrics",
    "title_of",
    "write_report",
]
