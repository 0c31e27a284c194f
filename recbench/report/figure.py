"""The evolution graph: one box per model (its test primary metric, mean ± std over seeds), one
arrow per lineage edge coloured by its verdict and labelled with the delta and its interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from recbench.report.lineage import FAMILY_COLOURS, FAMILY_ORDER, Point, family_of, layout, title_of
from recbench.report.summary import GAIN, LOSS, UNCLEAR, EdgeSummary, ModelSummary
from recbench.report.tables import _fmt_signed, _interval_text, cell

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
            line = f"{s.primary} {cell(s, s.primary)}"
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


__all__ = ["draw_lineage"]
