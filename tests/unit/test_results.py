"""The results store, run keys, the paired bootstrap and report writing."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from recbench.cli import config_dir
from recbench.report import (
    ReportInput,
    bootstrap_metric,
    paired_bootstrap,
    parents_of,
    write_report,
)
from recbench.results import (
    FAILED,
    FINISHED,
    STORE_NAME,
    append_record,
    code_version,
    is_stale,
    read_records,
    run_key,
)

# ---------------------------------------------------------------------------- store


def _writer(root: str, worker: int, n: int) -> None:
    for i in range(n):
        # a long payload makes interleaved writes visible as broken JSON lines
        append_record({"worker": worker, "i": i, "status": FINISHED, "pad": "x" * 5000}, root)


def test_concurrent_appends_keep_every_record_whole(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lines = (tmp_path / STORE_NAME).read_text().splitlines()
    assert len(lines) == 200
    parsed = [json.loads(line) for line in lines]  # every line is one whole record
    assert sorted((r["worker"], r["i"]) for r in parsed) == [
        (w, i) for w in range(4) for i in range(50)
    ]
    assert len(read_records(tmp_path)) == 200


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    append_record({"model": "lr", "status": FINISHED}, tmp_path)
    append_record({"model": "fm", "status": FINISHED}, tmp_path)
    with open(tmp_path / STORE_NAME, "a") as fh:
        fh.write('{"model": "mlp", "status": "fini')  # a writer killed mid-line
    assert [r["model"] for r in read_records(tmp_path)] == ["lr", "fm"]


def test_filters_and_stale_records(tmp_path: Path) -> None:
    now = {"recbench": code_version()}
    append_record({"model": "lr", "dataset": "a", "status": FINISHED, "versions": now}, tmp_path)
    append_record({"model": "fm", "dataset": "a", "status": FAILED, "versions": now}, tmp_path)
    old = {"model": "lr", "dataset": "a", "status": FINISHED, "versions": {"recbench": "0.0.1"}}
    append_record(old, tmp_path)
    append_record({"model": "lr", "dataset": "b", "status": FINISHED, "versions": now}, tmp_path)

    assert is_stale(old) and not is_stale({"versions": now})
    assert is_stale({"model": "lr"})  # no version: cannot be trusted either
    assert len(read_records(tmp_path, model="lr")) == 3
    assert len(read_records(tmp_path, model=["lr", "fm"], dataset="a")) == 3
    assert [r["model"] for r in read_records(tmp_path, status=FAILED)] == ["fm"]
    assert read_records(tmp_path, stale=True) == [old]
    assert len(read_records(tmp_path, model="lr", dataset="a", stale=False)) == 1
    assert read_records(tmp_path / "nowhere") == []


@pytest.fixture(scope="module")
def compose_train():
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield lambda *o: compose(config_name="train", overrides=["paths.run_dir=/x", *o])


def test_run_key_ignores_outputs_and_follows_what_changes_numbers(compose_train) -> None:
    base = run_key(compose_train("model=lr", "seed=1"), "data-a")
    same = [
        compose_train("model=lr", "seed=1", "paths.root=/elsewhere", "paths.run_dir=/y"),
        compose_train("model=lr", "seed=1", "logger=none"),
        compose_train("model=lr", "seed=1", "trainer.enable_progress_bar=false"),
    ]
    assert all(run_key(c, "data-a") == base for c in same)
    assert run_key(compose_train("model=fm", "seed=1"), "data-a") != base
    assert run_key(compose_train("model=lr", "seed=2"), "data-a") != base
    assert run_key(compose_train("model=lr", "seed=1"), "data-b") != base
    assert run_key(compose_train("model=lr", "seed=1", "trainer.max_epochs=3"), "data-a") != base


def test_run_key_includes_the_code_version(compose_train, monkeypatch) -> None:
    cfg = compose_train("model=lr")
    before = run_key(cfg, "d")
    monkeypatch.setattr("recbench.__version__", "999.0")
    assert run_key(cfg, "d") != before


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


# ---------------------------------------------------------------------------- compare's arguments


def test_compare_command_line_sugar() -> None:
    from recbench.compare import normalise_args, seed_list, train_overrides

    assert normalise_args(
        ["--report-only", "extra=[trainer.max_epochs=3,model.hidden=[64,32]]"]
    ) == [
        "report_only=true",
        'extra=["trainer.max_epochs=3","model.hidden=[64,32]"]',
    ]
    assert normalise_args(['extra=["debug=fast"]', "seeds=2"]) == [
        'extra=["debug=fast"]',
        "seeds=2",
    ]
    assert train_overrides(
        [
            "lineage=ctr",
            "seeds=3",
            "models=[lr]",
            "extra=[]",
            "dataset=x",
            "trainer.max_epochs=2",
            "++dataset.world.n_users=9",
        ]
    ) == ["trainer.max_epochs=2", "++dataset.world.n_users=9"]
    with pytest.raises(Exception, match="models="):
        train_overrides(["model=fm"])
    assert seed_list(3) == [1, 2, 3] and seed_list([7, 42]) == [7, 42]


def test_collect_uses_what_this_compare_trained_then_the_store(tmp_path: Path) -> None:
    from recbench.compare import Job, collect

    jobs = [Job(m, s, [], tmp_path, key=f"{m}{s}") for m in ("lr", "fm") for s in (1, 2)]
    jobs[0].record = {"model": "lr", "seed": 1, "run_key": "other"}  # config moved mid-compare
    store = [
        {"run_key": "lr2", "status": FINISHED, "model": "lr", "seed": 2, "n": 1},
        {"run_key": "lr2", "status": FINISHED, "model": "lr", "seed": 2, "n": 2},  # a rerun
        {"run_key": "fm1", "status": FAILED, "model": "fm", "seed": 1},
    ]
    runs, failures, missing = collect(jobs, store, report_only=True)
    assert runs["lr"][0]["run_key"] == "other" and runs["lr"][1]["n"] == 2  # the latest
    assert runs["fm"] == [] and [f["seed"] for f in failures] == [1] and missing == [("fm", 2)]
    assert collect(jobs, store, report_only=False)[1:] == ([], [])
