"""RL additions to a compare report: curves over simulated time and paired policy deltas.

``write_rl_report(records, out_dir)`` takes the finished run records of a compare (any mix; it
keeps those of ``task: rl``) and writes into ``out_dir``:

- ``rl_curves.png``: CTR and mean user activeness over simulated time for every policy (mean over
  its seeds), from each run's saved ``curves.json``;
- ``rl_pairs.md`` / ``rl_pairs.json``: for chosen pairs of policies, the delta of every window
  metric with a 95% interval from a paired bootstrap over users: users are resampled (paired by
  their index, which every policy of one seed shares), and each resample's delta is averaged
  over the seeds both policies ran. A per-request metric (``ctr``, ``precision@5``, ``ndcg@5``)
  is a ratio over the users' requests, which vary with the policy and the users' returns: each
  resample recomputes each run's Σ numerator / Σ requests over the resampled users, so the
  interval carries the randomness of the requests too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recbench.envs.metrics import PER_REQUEST
from recbench.report.bootstrap import resample_counts

# (a, b): the report shows b - a; pairs whose policies did not both run are skipped
DEFAULT_PAIRS = (
    ("random_policy", "most_popular"),
    ("most_popular", "linucb"),
    ("greedy_lr", "greedy_fm"),
    ("greedy_lr", "greedy_wide_deep"),
    ("greedy_wide_deep", "greedy_deepfm"),
    ("linucb", "drn_dn"),
    ("greedy_deepfm", "drn_dn"),
    ("drn_dn", "drn_ddqn"),
    ("drn_dn", "drn_ddqn_fqi"),
    ("drn_ddqn", "drn_ddqn_fqi"),
    ("drn_ddqn", "drn_ddqn_u"),
    ("drn_ddqn_u", "drn"),
    ("drn_ddqn_u", "drn_eg"),
    ("drn_eg", "drn"),
    ("linucb", "drn"),
    ("greedy_lr", "drn"),
    ("greedy_fm", "drn"),
    ("greedy_wide_deep", "drn"),
    ("greedy_deepfm", "drn"),
    ("drn_dn", "drn"),
    ("drn", "oracle_policy"),
    ("oracle_myopic", "oracle_policy"),
    ("drn", "oracle_myopic"),
)


def rl_records(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Finished RL records by model, in first-seen model order."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("task") == "rl" and r.get("status", "finished") == "finished":
            out.setdefault(str(r["model"]), []).append(r)
    return out


def _units(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    path = Path(str(record.get("run_dir"))) / "predictions.npz"
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k[len("unit__") :]: np.asarray(z[k]) for k in z.files if k.startswith("unit__")}


def ratio_parts(units: Mapping[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-user numerator and denominator of ``metric`` in one run, the metric being their
    sums' ratio: for a per-request metric its unit values (the user's sums over the window's
    mean requests) over the user's requests as a share of that mean; for the others the unit
    values over ones."""
    v = np.asarray(units[metric], np.float64)
    if metric not in PER_REQUEST:
        return v, np.ones(len(v))
    req = np.asarray(units["requests"], np.float64)
    return v, req / max(float(req.mean()), 1e-12)


NO_REQUESTS = (
    "no interval for ctr, precision@5 and ndcg@5: these runs saved no per-user requests "
    "(unit__requests, the ratios' denominators; runs recorded before it was saved); rerun them "
    "into a new results store (RECBENCH_OUTPUTS=<new folder>) for the intervals"
)


def paired_delta(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    metric: str,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """Delta b - a of ``metric`` over the seeds both ran, with a bootstrap interval over users
    and the per-seed deltas; None when they share no seed or world. Each resample draws users
    (the same for both policies and every seed) and takes, per seed, b's ratio of the drawn
    users' summed numerators and denominators (``ratio_parts``) minus a's, averaged over the
    seeds. Without the requests a per-request metric's interval is None, with ``note`` saying
    why."""
    by_seed_a = {int(r["seed"]): r for r in a}
    by_seed_b = {int(r["seed"]): r for r in b}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    rows = []
    for s in seeds:
        ra, rb = by_seed_a[s], by_seed_b[s]
        if (ra.get("data") or {}).get("key") != (rb.get("data") or {}).get("key"):
            continue
        ua, ub = _units(ra), _units(rb)
        if metric not in ua or metric not in ub or len(ua[metric]) != len(ub[metric]):
            continue
        rows.append((ua, ub))
    if not rows:
        return None
    deltas = [ub[metric] - ua[metric] for ua, ub in rows]
    n = len(deltas[0])
    out = {
        "metric": metric,
        "delta": float(np.mean(deltas, axis=0).mean()),
        "low": None,
        "high": None,
        "per_seed": [float(d.mean()) for d in deltas],
        "seeds": len(rows),
        "users": n,
    }
    if metric in PER_REQUEST and any("requests" not in u for pair in rows for u in pair):
        return out | {"note": NO_REQUESTS}
    parts = [(ratio_parts(ua, metric), ratio_parts(ub, metric)) for ua, ub in rows]
    counts = resample_counts(np.random.default_rng(seed), n, resamples)  # (resamples, users)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.mean(
            [
                (counts @ nb) / (counts @ db) - (counts @ na) / (counts @ da)
                for (na, da), (nb, db) in parts
            ],
            axis=0,
        )
    boot = boot[np.isfinite(boot)]  # a resample of users without a request in some run
    q = (1 - level) / 2
    if len(boot):
        out["low"], out["high"] = (float(x) for x in np.quantile(boot, [q, 1 - q]))
    return out


def summary(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per model: mean ± std over seeds of each test metric."""
    out = []
    for m, rs in runs.items():
        metrics = list(rs[0].get("metrics") or [])
        row: dict[str, Any] = {"model": m, "seeds": len(rs)}
        for k in metrics:
            v = [float(r["test"][k]) for r in rs if r["test"].get(k) is not None]
            row[k] = (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None)
        row["oracle_ctr"] = float(np.mean([(r.get("oracle") or {}).get("ctr", np.nan) for r in rs]))
        row["requests_per_sec"] = float(
            np.mean([(r.get("perf") or {}).get("requests_per_sec", np.nan) for r in rs])
        )
        out.append(row)
    return out


# the reference policies, in black and grey, so the learners keep the colours
_REFERENCE_STYLES = {
    "oracle_policy": ("black", "--"),
    "oracle_myopic": ("black", "-."),
    "random_policy": ("0.45", ":"),
}


def line_styles(models: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """(colour, line style) per policy, no two alike: the references their own, the others
    tab20's ten dark colours, then its ten light ones, then the same dashed."""
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors
    palette = list(tab20[0::2]) + list(tab20[1::2])
    out: dict[str, tuple[Any, str]] = {}
    i = 0
    for m in models:
        if m in _REFERENCE_STYLES:
            out[m] = _REFERENCE_STYLES[m]
        else:
            out[m] = (palette[i % len(palette)], "-" if i < len(palette) else "--")
            i += 1
    return out


def plot_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path | None:
    """CTR and activeness over simulated time, one line per policy (mean over its seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = line_styles(list(runs))
    drawn = 0
    for m, rs in runs.items():
        curves = []
        for r in rs:
            p = Path(str(r.get("run_dir"))) / str(r.get("curves") or "curves.json")
            if p.exists():
                curves.append(json.loads(p.read_text()))
        if not curves:
            continue
        n = min(len(c["hours"]) for c in curves)
        days = np.asarray(curves[0]["hours"][:n]) / 24.0
        colour, style = styles[m]
        for ax, key in zip(axes, ("ctr", "activeness")):
            y = np.mean([c[key][:n] for c in curves], axis=0)
            lw = 1.6 if m.startswith("drn") else 1.1
            ax.plot(days, y, linestyle=style, color=colour, label=m, lw=lw)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in zip(axes, ("CTR per impression", "mean user activeness")):
        ax.set_xlabel("simulated day")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    # beside the plots, where it hides no line
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def pairs_markdown(pairs: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    head = "| b − a | " + " | ".join(metrics) + " |"
    lines = [head, "|---|" + "---|" * len(metrics)]
    for p in pairs:
        cells = []
        for m in metrics:
            d = p["metrics"].get(m)
            if d is None:
                cells.append("—")
            elif d["low"] is None:
                cells.append(f"{d['delta']:+.4f} [—]")
            else:
                cells.append(f"{d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
        lines.append(f"| {p['b']} − {p['a']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    lines = [
        "| policy | seeds | " + " | ".join(metrics) + " | oracle ctr | requests/s |",
        "|---|---|" + "---|" * (len(metrics) + 2),
    ]
    for r in rows:
        cells = []
        for m in metrics:
            mean, std = r.get(m) or (float("nan"), None)
            cells.append(f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        lines.append(
            f"| {r['model']} | {r['seeds']} | "
            + " | ".join(cells)
            + f" | {r['oracle_ctr']:.4f} | {r['requests_per_sec']:.0f} |"
        )
    return "\n".join(lines)


def _notes(pairs: Sequence[dict[str, Any]]) -> list[str]:
    """Why an interval is missing, once per reason."""
    notes = (d.get("note") for p in pairs for d in p["metrics"].values() if d)
    return list(dict.fromkeys(n for n in notes if n))


def write_rl_report(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    resamples: int = 1000,
) -> dict[str, Any]:
    """Write ``rl_curves.png``, ``rl_pairs.md`` and ``rl_pairs.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = rl_records(records)
    if not runs:
        return {}
    metrics = list(next(iter(runs.values()))[0].get("metrics") or [])
    result = []
    for a, b in pairs:
        if a in runs and b in runs:
            d = {m: paired_delta(runs[a], runs[b], m, resamples) for m in metrics}
            result.append({"a": a, "b": b, "metrics": d})
    rows = summary(runs)
    plot = plot_curves(runs, out / "rl_curves.png")
    text = (
        "# RL policies in the simulated news world\n\n"
        "Test window; mean ± std over seeds.\n\n"
        + summary_markdown(rows, metrics)
        + "\n\nPaired deltas (b − a), 95% bootstrap interval over users (each resample's "
        "delta averaged over the shared seeds; ctr, precision@5 and ndcg@5 as ratios of the "
        "resampled users' sums over their requests).\n\n"
        + pairs_markdown(result, metrics)
        + "".join(f"\n\n[—] {note}." for note in _notes(result))
        + ("\n\n![CTR and activeness over simulated time](rl_curves.png)\n" if plot else "\n")
    )
    (out / "rl_pairs.md").write_text(text)
    (out / "rl_pairs.json").write_text(json.dumps({"summary": rows, "pairs": result}, indent=2))
    return {"pairs": result, "summary": rows, "plot": str(plot) if plot else None}


__all__ = [
    "DEFAULT_PAIRS",
    "line_styles",
    "paired_delta",
    "plot_curves",
    "ratio_parts",
    "rl_records",
    "write_rl_report",
]
