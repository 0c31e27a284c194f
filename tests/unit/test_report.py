"""The report: the paired bootstrap (row and per-unit recipes), per-model summaries and lineage
deltas learnt from each record's declared metrics, undefined values, failures, oracle values and
store problems, and the files a report writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from recbench.report import (
    ReportInput,
    bootstrap_metric,
    metric_mode,
    metric_value,
    paired_bootstrap,
    parents_of,
    write_report,
)
from recbench.results import FAILED, FINISHED, code_version

# ---------------------------------------------------------------------------- bootstrap


def _rank_auc(s: np.ndarray, y: np.ndarray) -> float:
    """Textbook Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ss = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y > 0.5
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _scores(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float64)
    child = 0.9 * y + rng.normal(size=n)
    parent = np.round(0.2 * y + rng.normal(size=n), 1)  # many ties
    return child, parent, y


def test_paired_bootstrap_matches_a_slow_reference() -> None:
    child, parent, y = _scores(1500)
    got = paired_bootstrap(child, parent, y, "auc", resamples=200, seed=11)
    rng = np.random.default_rng(11)
    deltas = []
    for _ in range(200):
        idx = rng.integers(0, len(y), size=len(y))
        deltas.append(_rank_auc(child[idx], y[idx]) - _rank_auc(parent[idx], y[idx]))
    low, high = np.quantile(deltas, [0.025, 0.975])
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)
    assert got.delta == pytest.approx(_rank_auc(child, y) - _rank_auc(parent, y), abs=1e-12)
    assert got.low > 0  # a clearly stronger child is a clear gain


def test_bootstrap_logloss_matches_a_loop() -> None:
    _, _, y = _scores(500)
    p = np.clip(0.3 + 0.4 * y + np.random.default_rng(0).normal(0, 0.1, 500), 0.01, 0.99)
    got = bootstrap_metric({"m": p}, y, "logloss", resamples=20, seed=2)["m"]
    rng = np.random.default_rng(2)
    ref = []
    for _ in range(20):
        idx = rng.integers(0, 500, size=500)
        ref.append(-np.mean(y[idx] * np.log(p[idx]) + (1 - y[idx]) * np.log(1 - p[idx])))
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_identical_predictions_give_an_interval_at_zero() -> None:
    child, _, y = _scores(2000)
    got = paired_bootstrap(child, child.copy(), y, "auc", resamples=300)
    assert got.low == 0.0 == got.high == got.delta


def test_bootstrap_of_20k_rows_is_fast() -> None:
    import time

    child, parent, y = _scores(20_000)
    t0 = time.perf_counter()
    paired_bootstrap(child, parent, y, "auc", resamples=1000)
    assert time.perf_counter() - t0 < 10.0  # ~1-2 s on one core; generous for a busy machine


# ---------------------------------------------------------------------------- report


STRENGTH = {
    "lr": 0.3,
    "fm": 0.6,
    "mlp": 0.9,
    "wide_deep": 0.9,
    "deepfm": 1.2,
    "din": 1.0,
    "din_dice": 1.0,
}


def _fake_runs(
    root: Path, models: list[str], seeds: list[int], n: int = 3000, data_key: str = "data-1"
) -> dict[str, list[dict]]:
    """Finished records with predictions whose signal grows with ``STRENGTH``."""
    y = (np.random.default_rng(0).random(n) < 0.3).astype(np.float32)
    runs: dict[str, list[dict]] = {}
    for k, m in enumerate(models):
        model_noise = np.random.default_rng(100 + k).normal(size=n)
        for s in seeds:
            seed_noise = np.random.default_rng(1000 * k + s).normal(size=n)
            # seeds of one model agree on most rows, as trained models do
            logits = STRENGTH[m] * (2 * y - 1) + model_noise + 0.3 * seed_noise
            run_dir = root / m / f"seed_{s}"
            run_dir.mkdir(parents=True)
            np.savez(
                run_dir / "predictions.npz",
                logits=logits.astype(np.float32),
                label=y,
                group=np.arange(n),
            )
            auc = _rank_auc(logits, y)
            runs.setdefault(m, []).append(
                {
                    "status": FINISHED,
                    "model": m,
                    "dataset": "synthetic",
                    "task": "ctr",
                    "primary_metric": "auc",
                    "seed": s,
                    "test": {"auc": auc, "gauc": auc - 0.02, "logloss": 0.6 - auc / 10},
                    "params": 1000 * len(m),
                    "perf": {
                        "train_samples_per_sec": 5000.0 + s,
                        "peak_rss_mb": 500.0,
                        "wall_seconds": 3.0,
                    },
                    "data": {"key": data_key},
                    "run_dir": str(run_dir),
                    "versions": {"recbench": code_version()},
                    "oracle": {"auc": 0.85},
                }
            )
    return runs


def _table_rows(md: str, heading: str) -> list[list[str]]:
    section = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in rows[1:]]


def test_report_files_rows_and_deltas(tmp_path: Path) -> None:
    models = ["lr", "fm", "mlp", "wide_deep", "deepfm"]
    runs = _fake_runs(tmp_path / "runs", models, [1, 2])
    failure = {
        "model": "broken",
        "seed": 1,
        "status": FAILED,
        "error": "Traceback ...\nImportError: no module named recbench.models.broken",
    }
    inp = ReportInput(
        lineage="ctr",
        dataset="synthetic",
        models=[*models, "broken"],
        runs=runs,
        failures=[failure],
        command="recbench compare lineage=ctr seeds=2",
        resamples=200,
    )
    summary = write_report(inp, tmp_path / "out")
    out = tmp_path / "out"
    for name in ("report.md", "report.html", "report.json", "lineage.png", "lineage.svg"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()

    metric_rows = {r[0]: r for r in _table_rows(md, "Test metrics")}
    assert set(metric_rows) == set(models)
    lr_auc = np.mean([r["test"]["auc"] for r in runs["lr"]])
    assert metric_rows["lr"][4].startswith(f"{lr_auc:.4f} ± ")

    # every lineage edge among the models, each parent of a multi-parent node included
    edge_rows = {(r[0], r[1]): r for r in _table_rows(md, "Lineage deltas")}
    assert set(edge_rows) == {
        ("fm", "lr"),
        ("mlp", "lr"),
        ("wide_deep", "lr"),
        ("wide_deep", "mlp"),
        ("deepfm", "wide_deep"),
        ("deepfm", "fm"),
    }
    fm_delta = np.mean([r["test"]["auc"] for r in runs["fm"]]) - lr_auc
    assert edge_rows[("fm", "lr")][4] == f"{fm_delta:+.4f}"
    assert edge_rows[("fm", "lr")][8] == "gain"  # strength 0.6 vs 0.3 on 3000 rows
    assert edge_rows[("wide_deep", "mlp")][8] == "within noise"  # same strength
    assert re.fullmatch(r"\[[-+]\d\.\d{4}, [-+]\d\.\d{4}\]", edge_rows[("fm", "lr")][7])

    assert "## Failures" in md and "no module named recbench.models.broken" in md
    assert "recbench compare lineage=ctr seeds=2" in md
    assert "oracle" in md.lower()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<style>" in html and "wide_deep" in html
    assert (out / "lineage.svg").read_text().lstrip().startswith("<?xml")
    edge = next(e for e in summary["edges"] if (e["child"], e["parent"]) == ("fm", "lr"))
    assert edge["interval"]["low"] > 0


def test_report_skips_the_interval_when_rows_are_not_shared(tmp_path: Path) -> None:
    runs = _fake_runs(tmp_path / "a", ["lr"], [1])
    runs.update(_fake_runs(tmp_path / "b", ["fm"], [1], data_key="data-2"))
    summary = write_report(
        ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=50), tmp_path / "out"
    )
    (edge,) = summary["edges"]
    assert edge["interval"] is None and "not shared" in edge["note"]
    assert edge["delta"] is not None


def test_an_edge_between_models_with_different_seeds_uses_the_seeds_both_have(
    tmp_path: Path,
) -> None:
    """A killed compare or a failed seed leaves fm with seeds 1-3 and lr with seed 1: the delta,
    its spread and the bootstrap use seed 1 alone, and the edge says so."""
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm"], [1, 2, 3])
    runs["lr"] = runs["lr"][:1]
    summary = write_report(
        ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=100), tmp_path / "out"
    )
    (edge,) = summary["edges"]
    one = runs["fm"][0]["test"]["auc"] - runs["lr"][0]["test"]["auc"]
    assert edge["delta"] == pytest.approx(one)
    assert edge["seeds"] == "seeds [1] only: fm has [1, 2, 3], lr [1]"
    # the interval's point estimate is seed 1's AUC difference, not fm's 3-seed average
    assert edge["interval"]["delta"] == pytest.approx(one, abs=1e-6)
    row = {(r[0], r[1]): r for r in _table_rows((tmp_path / "out" / "report.md").read_text(),
                                                  "Lineage deltas")}[("fm", "lr")]  # fmt: skip
    assert row[8].endswith("(seeds [1] only: fm has [1, 2, 3], lr [1])")
    runs["lr"][0]["seed"] = 7  # no seed in common: no delta at all
    summary = write_report(
        ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=100), tmp_path / "out2"
    )
    (edge,) = summary["edges"]
    assert edge["delta"] is None and "no seed in common" in edge["note"]


def test_variants_outside_the_graph_hang_under_their_base() -> None:
    assert parents_of("din_dice") == ("din",)
    assert parents_of("deepfm") == ("wide_deep", "fm")
    assert parents_of("dcn_v2") == ("wide_deep",)
    assert parents_of("broken") == ()


def test_a_lower_is_better_task_reports_gains_as_decreases(tmp_path: Path) -> None:
    """A task the report has never seen (rating, primary rmse): no CTR assumption leaks in."""
    rng = np.random.default_rng(0)
    y = rng.integers(1, 6, size=2000).astype(np.float64)
    runs: dict[str, list[dict]] = {}
    for m, noise in (("lr", 1.0), ("fm", 0.5)):
        for s in (1, 2):
            pred = y + noise * rng.normal(size=len(y))
            run_dir = tmp_path / m / str(s)
            run_dir.mkdir(parents=True)
            np.savez(run_dir / "predictions.npz", logits=pred, label=y, group=np.arange(len(y)))
            rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
            runs.setdefault(m, []).append(
                {
                    "status": FINISHED,
                    "model": m,
                    "task": "rating",
                    "primary_metric": "rmse",
                    "seed": s,
                    "test": {"rmse": rmse, "mae": float(np.mean(np.abs(pred - y)))},
                    "data": {"key": "k"},
                    "run_dir": str(run_dir),
                    "perf": {},
                }
            )
    summary = write_report(
        ReportInput("custom", "ml", ["lr", "fm"], runs, resamples=200), tmp_path / "out"
    )
    (edge,) = summary["edges"]
    assert edge["metric"] == "rmse" and edge["delta"] < 0
    assert edge["interval"]["high"] < 0 and edge["verdict"] == "gain"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| rmse ↓ | mae ↓ |" in md
    assert summary["models"]["fm"]["mode"] == "min"


def test_report_lists_stale_records_and_the_best_sweep_trial(tmp_path: Path) -> None:
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm"], [1])
    stale = {**runs["lr"][0], "versions": {"recbench": "0.0.1"}, "run_dir": "/old/run"}
    sweeps = []
    for i, auc in enumerate((0.61, 0.66, 0.63)):
        job = tmp_path / "multiruns" / "2026-01-01" / f"{i}_fm"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={i}e-3\n- model=fm\n")
        sweeps.append(
            {**runs["fm"][0], "run_dir": str(job), "val": {"auc": auc}, "test": {"auc": auc - 0.01}}
        )
    write_report(
        ReportInput(
            "ctr", "synthetic", ["lr", "fm"], runs, stale=[stale], sweeps=sweeps, resamples=50
        ),
        tmp_path / "out",
    )
    md = (tmp_path / "out" / "report.md").read_text()
    (stale_row,) = _table_rows(md, "Stale records (not used)")
    assert stale_row[:3] == ["lr", "1", "0.0.1"] and stale_row[4] == "/old/run"
    (best,) = _table_rows(md, "Best sweep trial per model")
    assert best[:5] == ["fm", "3", "auc", "0.6600", "0.6500"]
    assert best[5] == "optimizer.lr=1e-3 model=fm"


def test_wall_time_shows_sub_second_and_short_runs_to_two_digits(tmp_path: Path) -> None:
    models = ["lr", "fm", "mlp", "deepfm"]
    runs = _fake_runs(tmp_path / "runs", models, [1, 2])
    walls = {
        "lr": (0.41, 0.43),
        "fm": (3.08, 3.12),
        "mlp": (12.2, 12.4),
        "deepfm": (1234.0, 1236.0),
    }
    for m, seconds in walls.items():
        for run, s in zip(runs[m], seconds, strict=True):
            run["perf"]["wall_seconds"] = s
    write_report(ReportInput("ctr", "synthetic", models, runs, resamples=50), tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| model | train samples/s | step ms | peak RSS MB | wall s |" in md
    wall = {r[0]: r[4] for r in _table_rows(md, "Cost")}
    assert wall == {"lr": "0.42 ± 0.01", "fm": "3.1 ± 0.0", "mlp": "12 ± 0", "deepfm": "1,235 ± 1"}


# ---------------------------------------------------------------------------- declared metrics


def test_modes_and_dotted_values_come_from_the_record() -> None:
    declared = {"primary_metric": "coverage", "metric_modes": {"coverage": "min", "auc": "min"}}
    assert metric_mode(declared, "coverage") == "min"  # a name no fallback list knows
    assert metric_mode(declared, "auc") == "min"  # the record wins over the name
    old = {"primary_metric": "auc"}  # written before tasks declared modes
    assert metric_mode(old, "auc") == "max" and metric_mode(old, "logloss") == "min"
    assert metric_mode(old, "sampled.rmse") == "min"
    test = {"hr@10": 0.4, "sampled": {"hr@10": 0.8}, "flat.name": 1.0}
    assert metric_value(test, "sampled.hr@10") == 0.8
    assert metric_value(test, "flat.name") == 1.0
    assert metric_value(test, "sampled.ndcg@10") is None


def _unit_loop(values: dict[str, np.ndarray], seed: int, b: int, stat) -> list[float]:
    """child − parent of ``stat`` over units drawn as the bootstrap draws them."""
    rng = np.random.default_rng(seed)
    n = len(values["child"])
    out = []
    for _ in range(b):
        idx = rng.integers(0, n, size=n)
        out.append(stat(values["child"][idx]) - stat(values["parent"][idx]))
    return out


def test_sqrt_mean_and_mean_bootstraps_match_a_loop() -> None:
    rng = np.random.default_rng(5)
    parent = rng.gamma(2.0, size=400)
    child = 0.8 * parent + 0.1 * rng.gamma(1.0, size=400)
    got = paired_bootstrap(child, parent, None, "sqrt_mean", resamples=60, seed=3)
    ref = _unit_loop({"child": child, "parent": parent}, 3, 60, lambda v: np.sqrt(v.mean()))
    low, high = np.quantile(ref, [0.025, 0.975])
    assert got.low == pytest.approx(low, abs=1e-12) and got.high == pytest.approx(high, abs=1e-12)
    assert got.delta == pytest.approx(np.sqrt(child.mean()) - np.sqrt(parent.mean()), abs=1e-12)

    # a unit that is undefined (NaN) counts in no resample, as in the task's own mean
    child[7] = parent[7] = np.nan
    boot = bootstrap_metric({"child": child, "parent": parent}, None, "mean", 40, seed=1)
    ref = _unit_loop({"child": child, "parent": parent}, 1, 40, np.nanmean)
    np.testing.assert_allclose(boot["child"] - boot["parent"], ref, rtol=1e-10)


RATING = {
    "task": "rating",
    "metrics": ["rmse", "mae"],
    "primary_metric": "rmse",
    "primary_mode": "min",
    "metric_modes": {"rmse": "min", "mae": "min"},
    "bootstrap_unit": "row",
    "bootstrap": {"rmse": "sqrt_mean", "mae": "mean"},
}


def _declared_record(
    root: Path, model: str, seed: int, task: dict, units: dict[str, np.ndarray], test: dict
) -> dict:
    """A finished record of a task that declares its metrics, its per-unit arrays saved."""
    run_dir = root / model / f"seed_{seed}"
    run_dir.mkdir(parents=True)
    np.savez(run_dir / "predictions.npz", **{f"unit__{k}": v for k, v in units.items()})
    return {
        "status": FINISHED,
        "model": model,
        "dataset": "ml",
        **task,
        "seed": seed,
        "test": test,
        "data": {"key": "prepared-1"},
        "run_dir": str(run_dir),
        "perf": {},
        "versions": {"recbench": code_version()},
    }


@pytest.mark.parametrize(("child_noise", "verdict"), [(0.8, "gain"), (1.25, "loss")])
def test_rating_rmse_from_squared_errors_lower_is_a_gain(
    tmp_path: Path, child_noise: float, verdict: str
) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(1, 6, size=2000).astype(np.float64)
    runs: dict[str, list[dict]] = {}
    squared: dict[str, list[np.ndarray]] = {}
    for m, noise in (("lr", 1.0), ("fm", child_noise)):
        shared = rng.normal(size=len(y))  # what the model gets wrong whatever the seed
        for s in (1, 2):
            err = noise * (0.9 * shared + 0.3 * rng.normal(size=len(y)))
            sq = err**2
            squared.setdefault(m, []).append(sq)
            test = {"rmse": float(np.sqrt(sq.mean())), "mae": float(np.abs(err).mean())}
            rec = _declared_record(tmp_path, m, s, RATING, {"rmse": sq, "mae": np.abs(err)}, test)
            runs.setdefault(m, []).append(rec)
    summary = write_report(
        ReportInput("custom", "ml", ["lr", "fm"], runs, resamples=300), tmp_path / "out"
    )
    (edge,) = summary["edges"]
    assert edge["metric"] == "rmse" and edge["verdict"] == verdict
    assert edge["unit"] == "row" and edge["units"] == 2000
    interval = edge["interval"]
    if verdict == "gain":  # lower RMSE: the whole interval below zero
        assert edge["delta"] < 0 and interval["high"] < 0
    else:
        assert edge["delta"] > 0 and interval["low"] > 0
    # the seed-averaged delta is RMSE from the seed-averaged squared errors of every row
    rmse = {m: np.sqrt(np.mean(np.mean(v, axis=0))) for m, v in squared.items()}
    assert interval["delta"] == pytest.approx(rmse["fm"] - rmse["lr"], abs=1e-12)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| rmse ↓ | mae ↓ |" in md
    assert "paired bootstrap over 2,000 test rows" in md
    assert "seed-averaged per-test-row terms of rmse" in md  # squared errors, not predictions


RANKING = {
    "task": "topk",
    "metrics": ["ndcg@10", "hr@10", "sampled.ndcg@10", "sampled.hr@10"],
    "primary_metric": "ndcg@10",
    "primary_mode": "max",
    "metric_modes": {
        "ndcg@10": "max",
        "hr@10": "max",
        "sampled.ndcg@10": "max",
        "sampled.hr@10": "max",
    },
    "bootstrap_unit": "user",
    "bootstrap": {
        "ndcg@10": "mean",
        "hr@10": "mean",
        "sampled.ndcg@10": "mean",
        "sampled.hr@10": "mean",
    },
    "oracle": {"ndcg@10": 0.6, "sampled": {"ndcg@10": 0.9}},
}


def test_ranking_users_are_the_units_and_sampled_metrics_are_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n_users = 943
    base = rng.beta(2.0, 5.0, size=n_users)
    runs: dict[str, list[dict]] = {}
    ndcg: dict[str, list[np.ndarray]] = {}
    sampled_hr: dict[str, list[float]] = {}
    for m, lift in (("lr", 0.0), ("fm", 0.06)):
        for s in (1, 2):
            u = np.clip(base + lift + 0.05 * rng.normal(size=n_users), 0.0, 1.0)
            u[0] = np.nan  # a user the metric is undefined for (no test item)
            hit = (u > 0.25).astype(np.float64)
            hit[0] = np.nan
            ndcg.setdefault(m, []).append(u)
            sampled_hr.setdefault(m, []).append(float(np.nanmean(np.minimum(1.0, 2 * hit))))
            test = {
                "ndcg@10": float(np.nanmean(u)),
                "hr@10": float(np.nanmean(hit)),
                "sampled": {
                    "ndcg@10": float(np.nanmean(np.minimum(1.0, 1.5 * u))),
                    "hr@10": sampled_hr[m][-1],
                },
            }
            units = {"ndcg@10": u, "hr@10": hit}
            runs.setdefault(m, []).append(_declared_record(tmp_path, m, s, RANKING, units, test))
    summary = write_report(
        ReportInput("custom", "ml", ["lr", "fm"], runs, resamples=300), tmp_path / "out"
    )
    md = (tmp_path / "out" / "report.md").read_text()

    header = md.split("## Test metrics\n", 1)[1].split("\n|---", 1)[0].splitlines()[-1]
    assert "| ndcg@10 ↑ | hr@10 ↑ | sampled.ndcg@10 ↑ | sampled.hr@10 ↑ |" in header
    assert "share of oracle lift" not in header  # no AUC-like metric here
    rows = {r[0]: r for r in _table_rows(md, "Test metrics")}
    hr = sampled_hr["fm"]
    assert rows["fm"][7] == f"{np.mean(hr):.4f} ± {np.std(hr, ddof=1):.4f}"

    (edge,) = summary["edges"]
    assert edge["verdict"] == "gain" and edge["interval"]["low"] > 0
    assert edge["unit"] == "user" and edge["units"] == n_users
    point = {m: np.nanmean(np.mean(v, axis=0)) for m, v in ndcg.items()}
    assert edge["interval"]["delta"] == pytest.approx(point["fm"] - point["lr"], abs=1e-12)
    assert "paired bootstrap over 943 users" in md and "test rows" not in md

    oracle = {r[0]: r for r in _table_rows(md, "Oracle")}
    assert oracle["oracle"][1] == "0.6000" and oracle["oracle"][3] == "0.9000"
    gap = 0.6 - np.mean([np.nanmean(u) for u in ndcg["fm"]])
    assert oracle["fm"][2] == f"{gap:+.4f}"
    assert summary["models"]["fm"]["oracle"] == {"ndcg@10": 0.6, "sampled.ndcg@10": 0.9}


POLICY = {
    "task": "rl",
    "metrics": ["clicks", "ctr"],
    "primary_metric": "clicks",
    "primary_mode": "max",
    "metric_modes": {"clicks": "max", "ctr": "max"},
    "bootstrap_unit": "user",
    "bootstrap": {"clicks": "mean", "ctr": "mean"},
}


def test_an_oracle_that_differs_by_run_is_averaged_over_each_models_seeds(
    tmp_path: Path,
) -> None:
    """The RL task's oracle scores the requests each policy served, so its value differs by seed
    and by model: each model's oracle is the mean over its own seeds, its gap is to that, and the
    oracle row gives the models' range, not the first record's value."""
    rng = np.random.default_rng(2)
    oracle_ctr = {("lr", 1): 0.42, ("lr", 2): 0.38, ("fm", 1): 0.36, ("fm", 2): 0.40}
    runs: dict[str, list[dict]] = {}
    for m, lift in (("lr", 0.0), ("fm", 0.1)):
        for s in (1, 2):
            clicks = rng.poisson(1.0 + lift, size=200).astype(np.float64)
            ctr = np.clip(0.1 + lift + 0.02 * rng.normal(size=200), 0, 1)
            test = {"clicks": float(clicks.mean()), "ctr": float(ctr.mean())}
            rec = _declared_record(tmp_path, m, s, POLICY, {"clicks": clicks, "ctr": ctr}, test)
            rec["oracle"] = {"ctr": oracle_ctr[(m, s)], "precision@5": 1.0}
            runs.setdefault(m, []).append(rec)
    summary = write_report(
        ReportInput("rl", "synthetic", ["lr", "fm"], runs, resamples=50), tmp_path / "out"
    )
    md = (tmp_path / "out" / "report.md").read_text()
    mean = {m: np.mean([r["test"]["ctr"] for r in runs[m]]) for m in runs}
    assert summary["models"]["lr"]["oracle"] == {"ctr": pytest.approx(0.40)}
    assert summary["models"]["fm"]["oracle"] == {"ctr": pytest.approx(0.38)}
    oracle = {r[0]: r for r in _table_rows(md, "Oracle")}
    assert oracle["oracle"][1] == "0.3800–0.4000"
    assert oracle["lr"][2] == "0.4000" and oracle["fm"][2] == "0.3800"
    assert oracle["lr"][3] == f"{0.40 - mean['lr']:+.4f}"
    assert oracle["fm"][3] == f"{0.38 - mean['fm']:+.4f}"
    assert "ctr 0.3800–0.4000." in md
    assert "paired bootstrap over 200 users" in md and "per-user terms of clicks" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<td>0.3800–0.4000</td>" in html


@pytest.mark.parametrize("compared", ["clicks", "ctr"])
def test_rl_ratio_metrics_get_no_mean_of_users_interval(tmp_path: Path, compared: str) -> None:
    """CTR, precision@5 and nDCG@5 are ratios over each user's requests, which vary with the
    policy; resampled as a mean of per-user values, the requests held at the full sample's,
    their interval would be wrong (``rl_pairs.md`` resamples them as ratios). The RL task
    declares no recipe for them, so an edge on CTR has no interval and says why; clicks, a mean
    over users, keeps its own."""
    from recbench.tasks.rl import RLTask

    declared = RLTask.describe()
    assert sorted(declared["bootstrap"]) == [
        "activeness",
        "clicks",
        "cum_activeness",
        "cum_clicks",
        "reward",
    ]
    rng = np.random.default_rng(4)
    task = declared | {"metrics": ["clicks", "ctr"], "primary_metric": compared}
    runs: dict[str, list[dict]] = {}
    for m, lift in (("lr", 0.0), ("fm", 0.5)):
        for s in (1, 2):
            requests = rng.integers(1, 20, size=200).astype(np.float64)
            clicks = rng.binomial(5 * requests.astype(int), 0.3 + 0.1 * lift).astype(np.float64)
            units = {"clicks": clicks, "ctr": clicks / (5 * requests.mean()), "requests": requests}
            test = {"clicks": clicks.mean(), "ctr": clicks.sum() / (5 * requests.sum())}
            runs.setdefault(m, []).append(_declared_record(tmp_path, m, s, task, units, test))
    summary = write_report(
        ReportInput("rl", "synthetic", ["lr", "fm"], runs, resamples=50), tmp_path / "out"
    )
    md = (tmp_path / "out" / "report.md").read_text()
    (edge,) = summary["edges"]
    assert edge["metric"] == compared and edge["delta"] > 0
    if compared == "clicks":
        assert edge["verdict"] == "gain" and edge["interval"]["low"] > 0
    else:
        assert edge["interval"] is None and edge["verdict"] == "no paired test"
        assert edge["note"] == "no bootstrap recipe for ctr"
        assert "no paired test (no bootstrap recipe for ctr)" in md


# ---------------------------------------------------------------------------- undefined, failed


def test_undefined_values_are_shown_and_left_out_of_means_and_deltas(tmp_path: Path) -> None:
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm", "mlp"], [1, 2])
    why = "the test split holds one class"
    defined = runs["fm"][0]["test"]["auc"]
    runs["fm"][1]["test"]["auc"] = None
    runs["fm"][1]["undefined"] = {"test.auc": why}
    for r in runs["mlp"]:
        r["test"]["auc"] = None
        r["undefined"] = {"test.auc": why}
    summary = write_report(
        ReportInput("ctr", "synthetic", ["lr", "fm", "mlp"], runs, resamples=200),
        tmp_path / "out",
    )
    md = (tmp_path / "out" / "report.md").read_text()
    rows = {r[0]: r for r in _table_rows(md, "Test metrics")}
    assert rows["fm"][4] == f"{defined:.4f} *"  # the one seed that defines it, marked
    assert rows["mlp"][4] == "undefined"
    assert summary["models"]["fm"]["test"]["auc"] == [pytest.approx(defined), None]
    assert summary["models"]["mlp"]["test"]["auc"] == [None, None]
    assert f"fm test auc, seed 2: {why}" in md and f"mlp test auc, seed 1: {why}" in md

    edges = {(e["child"], e["parent"]): e for e in summary["edges"]}
    lr_auc = np.mean([r["test"]["auc"] for r in runs["lr"]])
    fm = edges[("fm", "lr")]
    assert fm["delta"] == pytest.approx(defined - lr_auc)
    assert fm["spread"] is None  # one paired seed: no spread
    assert fm["interval"] is not None and fm["verdict"] == "gain"
    mlp = edges[("mlp", "lr")]
    assert mlp["delta"] is None and mlp["interval"] is None
    assert "undefined" in mlp["note"] and mlp["verdict"] == "n/a"
    json.loads((tmp_path / "out" / "report.json").read_text())  # strict JSON: no NaN


def test_runs_that_tested_only_their_first_batches_are_named_as_partial(tmp_path: Path) -> None:
    """A compare of runs with trainer.limit_test_batches (debug=fast) says so below the test
    metrics, per model and seed, so its figures are not read as a full test's."""
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm"], [1, 2])
    for r in runs["fm"]:
        r["test_coverage"] = {"unit": "row", "tested": 256, "of": 2847, "partial": True}
    for r in runs["lr"]:
        r["test_coverage"] = {"unit": "row", "tested": 2847, "of": 2847}
    write_report(ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=50), tmp_path / "o")
    md = (tmp_path / "o" / "report.md").read_text()
    assert "Partial: fm, seed 1: 256 of 2,847 test rows; seed 2: 256 of 2,847 test rows." in md
    assert "Partial: lr" not in md
    assert "first batches of the test split" in md


def test_an_edge_whose_shared_seeds_all_leave_the_metric_undefined_has_no_delta(
    tmp_path: Path,
) -> None:
    """fm ran seeds 1-3 and lr seed 1 alone; fm's seed 1 leaves AUC undefined: the seeds both
    have define no delta, so the edge has none (not NaN) and is drawn as having no result."""
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm"], [1, 2, 3])
    runs["lr"] = runs["lr"][:1]
    runs["fm"][0]["test"]["auc"] = None
    runs["fm"][0]["undefined"] = {"test.auc": "the test split holds one class"}
    summary = write_report(
        ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=50), tmp_path / "out"
    )
    (edge,) = summary["edges"]
    assert edge["delta"] is None and edge["interval"] is None and edge["verdict"] == "n/a"
    assert edge["note"] == "test auc undefined for fm"
    assert edge["seeds"] == "seeds [1] only: fm has [1, 2, 3], lr [1]"
    text = (tmp_path / "out" / "report.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in report.json"))


def test_failed_records_and_store_problems_are_listed_not_averaged(tmp_path: Path) -> None:
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm"], [1])
    failed = {"model": "fm", "seed": 2, "status": FAILED, "error": "RuntimeError: out of memory"}
    runs["fm"].append(failed)
    damaged = "/x/results.jsonl:7: no whole record (a torn write): '{\"mod'"
    summary = write_report(
        ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=50, store_problems=[damaged]),
        tmp_path / "out",
    )
    assert summary["models"]["fm"]["seeds"] == [1]
    assert summary["models"]["fm"]["test"]["auc"][0] == pytest.approx(runs["fm"][0]["test"]["auc"])
    assert summary["failures"] == [
        {"model": "fm", "seed": 2, "error": "RuntimeError: out of memory"}
    ]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Failures" in md and "out of memory" in md
    assert "## Store problems" in md and "results.jsonl:7" in md
    assert summary["store_problems"] == [damaged]


def test_old_ctr_records_without_declared_modes_still_compare(tmp_path: Path) -> None:
    """Store records written before tasks declared modes and recipes: arrows from the names,
    rows from logits and labels; a new record (declared) pairs with an old one."""
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm"], [1, 2])
    assert not any(k in runs["lr"][0] for k in ("metric_modes", "bootstrap", "metrics"))
    for r in runs["fm"]:
        r.update(
            metrics=["auc", "gauc", "logloss"],
            primary_mode="max",
            metric_modes={"auc": "max", "gauc": "max", "logloss": "min"},
            bootstrap_unit="row",
            bootstrap={"auc": "auc", "logloss": "logloss"},
        )
    summary = write_report(
        ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=200), tmp_path / "out"
    )
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| auc ↑ | gauc ↑ | logloss ↓ |" in md
    assert "paired bootstrap over 3,000 test rows" in md
    (edge,) = summary["edges"]
    assert edge["verdict"] == "gain" and edge["interval"]["low"] > 0
    assert summary["models"]["lr"]["oracle_auc"] == 0.85


def test_each_lineage_node_lists_the_tasks_its_model_serves() -> None:
    """`recbench models task=<task>` and the task-mismatch error read the lineage's tasks; they
    must be those the model classes serve."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from recbench.cli import config_dir
    from recbench.lineage import NODES
    from recbench.tasks.base import model_tasks

    have = {p.stem for p in (Path(config_dir()) / "model").glob("*.yaml")}
    listed: dict[type, set[str]] = {}  # per model class: the tasks its nodes list
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for node in NODES:
            if node.model in have:
                cls = get_class(
                    str(compose("train", overrides=[f"model={node.model}"]).model._target_)
                )
                assert set(node.tasks) <= set(model_tasks(cls)), (node.model, node.tasks)
                listed.setdefault(cls, set()).update(node.tasks)
    # a variant config (mf_bpr: MF trained for top-K) may list fewer; its class's nodes, all
    for cls, tasks in listed.items():
        assert tasks == set(model_tasks(cls)), (cls.__name__, tasks)


def test_every_model_config_is_a_lineage_node_or_a_named_variant_of_one() -> None:
    """`recbench models` lists the lineage's nodes, and the report places a config by its node:
    a config that is neither a node nor ``<node>_<variant>`` (as din_dice is of din) would be
    missing from the list and drawn as 'other', without parents."""
    from recbench.cli import config_dir
    from recbench.lineage import BY_MODEL
    from recbench.report.lineage import family_of, variant_base

    for path in sorted((Path(config_dir()) / "model").glob("*.yaml")):
        model = path.stem
        assert model in BY_MODEL or variant_base(model), model
        assert family_of(model) != "other", model


def test_a_run_refused_by_its_config_checks_is_listed_with_its_problems(tmp_path: Path) -> None:
    """A run that stopped on the config checks prints a heading and the problems below it: the
    failure's line (compare's console and report.md) gives the problems, not the heading alone."""
    from recbench.report import error_line
    from recbench.validate.problems import Problems

    problems = Problems()
    problems.add("trainer.max_epochs", "trainer.max_epochs=0 trains nothing")
    problems.add("optimizer.lr", "optimizer.lr=-1: must be > 0")
    log = f"some warning\nerror: {problems.error('train')}\n"
    line = error_line(log)
    assert line == (
        "error: recbench train: the configuration has 2 problems; nothing was run: "
        "trainer.max_epochs=0 trains nothing; optimizer.lr=-1: must be > 0"
    )
    runs = _fake_runs(tmp_path / "runs", ["lr", "fm"], [1])
    runs["fm"].append({"model": "fm", "seed": 2, "status": FAILED, "error": log})
    write_report(ReportInput("ctr", "synthetic", ["lr", "fm"], runs, resamples=50), tmp_path / "o")
    md = (tmp_path / "o" / "report.md").read_text()
    assert "trainer.max_epochs=0 trains nothing; optimizer.lr=-1: must be > 0" in md
    assert error_line("Traceback\nValueError: bad\n- not a list item of a heading") == (
        "ValueError: bad"
    )
