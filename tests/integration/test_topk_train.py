"""`recbench train task=topk` end to end: the record and its per-user outputs, the oracle, a
model without parameters, DDP evaluation parity, MovieLens-1M's layout, and compare's NeuMF
pretraining."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_train import (
    evaluate_on_one_and_two_ranks,
    metrics,
    recbench,
    run_dir_of,
)

TINY = [
    "task=topk",
    "++dataset.world.n_users=150",
    "++dataset.world.n_items=300",
    "trainer.enable_progress_bar=false",
    "threads=1",
    "batch_size=1024",
]


def test_topk_run_records_full_and_sampled_metrics_per_user_and_the_oracle(tmp_path):
    proc = recbench("train", "model=gmf", *TINY, "trainer.max_epochs=2",
                    *run_dir_of(tmp_path, "g"), cwd=tmp_path)  # fmt: skip
    m = metrics(tmp_path, "g")
    # without a progress bar, every epoch still says how validation went
    text = proc.stdout + proc.stderr
    for epoch in (0, 1):
        line = f"epoch {epoch}: val ndcg@10 {m['val_history'][epoch]['ndcg@10']:.4f}, hr@10"
        assert line in text, text[-2000:]
    assert m["task"] == "topk" and m["primary_metric"] == "ndcg@10"
    assert m["bootstrap_unit"] == "user" and m["bootstrap"]["sampled.hr@10"] == "mean"
    for split in ("val", "test"):
        for k in ("ndcg@10", "hr@10", "recall@10", "mrr@10", "hr@5", "ndcg@20"):
            assert 0.0 <= m[split][k] <= 1.0, (split, k)
            assert 0.0 <= m[split]["sampled"][k] <= 1.0
        # 99 sampled negatives are far easier than every item
        assert m[split]["sampled"]["hr@10"] >= m[split]["hr@10"]
    assert 0 < m["oracle"]["ndcg@10"] <= 1 and 0 < m["oracle"]["hr@10"] <= 1
    assert m["oracle"]["hr@10"] > m["test"]["hr@10"]  # two epochs do not beat the truth
    out = np.load(tmp_path / "g" / "predictions.npz")
    units = m["data"]["rows"]["test"]  # leave-one-out: one test event per user
    assert len(out["unit__ndcg@10"]) == len(out["user"]) == units == 150
    assert float(out["unit__ndcg@10"].mean()) == pytest.approx(m["test"]["ndcg@10"], abs=1e-6)
    assert float(out["unit__sampled.hr@10"].mean()) == pytest.approx(
        m["test"]["sampled"]["hr@10"], abs=1e-6
    )
    assert np.all(np.diff(out["user"]) > 0)  # users in code order
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for e in (tmp_path / "g" / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"val/ndcg@10", "test/sampled.hr@10", "train/loss_epoch"} <= tags

    # Pop has no parameters: one epoch of no-op steps, then validation, checkpoint and test
    recbench("train", "model=pop", *TINY, "logger=none", *run_dir_of(tmp_path, "p"), cwd=tmp_path)
    pop = metrics(tmp_path, "p")
    assert pop["params"] == 0 and pop["epochs"] == 1 and pop["test"]["hr@10"] > 0
    assert pop["oracle"] == m["oracle"]  # same prepared data, same held-out events


def test_ddp_ranking_metrics_equal_one_rank_exactly(tmp_path):
    """The seed's initial weights evaluated on 1 and on 2 CPU ranks: every user counted once."""
    base = ["model=neumf", *TINY, "trainer.max_epochs=1", "record=false", "logger=none",
            "++dataset.world.n_users=151"]  # fmt: skip
    one, two = evaluate_on_one_and_two_ranks(
        tmp_path, base, ("task.eval.chunk_users=16", "task.eval.blocked=true"), train=False
    )
    assert one["test"] == two["test"] and one["val"] == two["val"]
    a = np.load(tmp_path / "one" / "predictions.npz")
    b = np.load(tmp_path / "two" / "predictions.npz")
    assert np.array_equal(a["unit__ndcg@10"], b["unit__ndcg@10"])
    assert len(a["user"]) == 151  # an odd number of users: uneven shards


def test_a_setting_the_topk_task_refuses_is_one_line_not_hydras_wrapping(tmp_path):
    # (a model that does not serve task=topk: tests/unit/test_topk.py, in process)
    proc = recbench("train", "task=topk", "model=mf", "task.loss=hinge", cwd=tmp_path, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text and "_target_" not in text, text
    assert "error: task.loss='hinge'; choose one of bce, bpr" in text


def write_ml1m(root: Path, n_users: int = 40, n_items: int = 60, seed: int = 0) -> int:
    """A small file set in the MovieLens-1M layout ('::', latin-1)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    lines = []
    for u in range(1, n_users + 1):
        for i in rng.choice(np.arange(1, n_items + 1), 8, replace=False):
            lines.append(f"{u}::{i}::{rng.integers(1, 6)}::{978300000 + rng.integers(0, 10**6)}")
    (root / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (root / "users.dat").write_text(
        "\n".join(f"{u}::{'MF'[u % 2]}::25::{u % 21}::4810{u % 10}" for u in range(1, n_users + 1))
        + "\n",
        encoding="latin-1",
    )
    (root / "movies.dat").write_text(
        "\n".join(f"{i}::Film {i} (1999)::Comedy|Drama" for i in range(1, n_items + 1)) + "\n",
        encoding="latin-1",
    )
    return len(lines)


def test_movielens_1m_layout_under_the_ncf_protocol(tmp_path):
    n = write_ml1m(tmp_path / "ml-1m")
    recbench(
        "train",
        "task=topk",
        "model=gmf",
        "dataset=movielens-1m",
        f"dataset.root={tmp_path / 'ml-1m'}",
        "task.eval.sampled=20",  # 60 films: 99 negatives would be refused
        "debug=fast",
        "logger=none",
        "record=false",
        "threads=1",
        *run_dir_of(tmp_path, "ml"),
        cwd=tmp_path,
    )
    m = metrics(tmp_path, "ml")
    rows = m["data"]["rows"]
    assert rows == {"train": n - 80, "val": 40, "test": 40}  # every rating a positive, LOO
    assert 0 <= m["test"]["sampled"]["hr@10"] <= 1


@pytest.mark.slow
def test_compare_drops_models_off_task_and_pretrains_neumf_from_its_parts(tmp_path):
    outputs = tmp_path / "outputs"
    env_args = ["task=topk", "lineage=cf", "models=[pop,autorec,neumf_pretrained]", "seeds=1",
                *TINY[1:], "trainer.max_epochs=1", "logger=none",
                "jobs=2"]  # fmt: skip  # two at a time: neumf_pretrained waits for its parts
    os.environ["RECBENCH_OUTPUTS"], old = str(outputs), os.environ["RECBENCH_OUTPUTS"]
    try:
        proc = recbench("compare", *env_args, cwd=tmp_path)
        assert "leaves out autorec" in proc.stderr
        runs = {p.parent.parent.name: p for p in outputs.rglob("runs/*/seed_1/metrics.json")}
        assert set(runs) == {"pop", "gmf", "ncf_mlp", "neumf_pretrained"}
        overrides = (runs["neumf_pretrained"].parent / ".hydra" / "overrides.yaml").read_text()
        assert "runs/gmf/seed_1" in overrides and "runs/ncf_mlp/seed_1" in overrides
        again = recbench("compare", *env_args, cwd=tmp_path)  # everything reused from the store
        assert "0 to train" in " ".join(again.stderr.split())  # rich wraps the line
        m = json.loads(runs["neumf_pretrained"].read_text())
        assert m["test"]["hr@10"] > 0
        # the GMF part's folder deleted, and NeuMF's run gone from the store (as if it had
        # failed): NeuMF to train needs the part's weights, so the part trains again first
        # instead of NeuMF failing on a missing folder
        shutil.rmtree(runs["gmf"].parent)
        store = outputs / "results.jsonl"
        kept = [ln for ln in store.read_text().splitlines()
                if json.loads(ln)["model"] != "neumf_pretrained"]  # fmt: skip
        store.write_text("".join(ln + "\n" for ln in kept))
        third = recbench("compare", *env_args, cwd=tmp_path)
        text = " ".join(third.stderr.split())
        assert "✓ gmf seed 1: test ndcg@10" in text and "failed" not in text, text[-2000:]
        gmf = [p for p in outputs.rglob("runs/gmf/seed_1/metrics.json") if p != runs["gmf"]]
        assert len(gmf) == 1  # in this compare's folder
        overrides = [p for p in outputs.rglob("runs/neumf_pretrained/seed_1/.hydra/overrides.yaml")
                     if gmf[0].parent.parent.parent in p.parents]  # fmt: skip
        assert str(gmf[0].parent) in overrides[0].read_text()  # NeuMF started from it
    finally:
        os.environ["RECBENCH_OUTPUTS"] = old


def test_a_table_of_clicks_reports_the_users_it_cannot_evaluate(tmp_path):
    """A user's own click log (ISO times with a UTC offset, labels): users with fewer than
    three clicks are trained on and not ranked under leave-one-out; that count was nowhere,
    now it is logged when the data are prepared and recorded as train_only_users."""
    from tests import cli

    rng = np.random.default_rng(0)
    lines = []
    for u in range(40):
        clicks = 1 + u % 2 if u < 6 else 6  # users 0-5: one or two clicks
        for k in range(clicks + 3):
            item = int(rng.integers(0, 60))
            lines.append(f"u{u:03d},{item:04d},2024-05-{1 + k:02d}T10:00:00Z,{int(k < clicks)}")
    (tmp_path / "log.csv").write_text("user,item,time,click\n" + "\n".join(lines) + "\n")
    cols = [f"dataset.adapter.columns.{r}={c}" for r, c in
            (("user", "user"), ("item", "item"), ("time", "time"), ("label", "click"))]  # fmt: skip
    args = ["train", "task=topk", "model=pop", "dataset=table", f"dataset.root={tmp_path}",
            "dataset.adapter.path=log.csv", *cols, "threads=1", "trainer.max_epochs=1",
            "task.eval.sampled=20",  # 60 items: 99 negatives would be refused
            "trainer.enable_progress_bar=false", *run_dir_of(tmp_path, "p")]  # fmt: skip
    proc = cli.run(args, tmp_path, env={"RECBENCH_CACHE_DIR": str(tmp_path / "cache")})
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out[-3000:]
    assert "6 of 40 users have no positive held out under task.split.kind=leave_one_out" in out
    m = metrics(tmp_path, "p")
    assert m["train_only_users"] == 6 and m["data"]["rows"]["test"] == 34


def test_sampled_draws_script_rescoring_matches_the_run_and_spreads_over_draws(tmp_path):
    """scripts/sampled_draws.py re-scores a finished run on its own negatives (the run's sampled
    HR@10, exactly) and on fresh draws (uniform over unseen items: never a seen one)."""
    import subprocess
    import sys

    recbench("train", "model=gmf", *TINY, "trainer.max_epochs=2", "logger=none",
             *run_dir_of(tmp_path, "g"), cwd=tmp_path)  # fmt: skip
    m = metrics(tmp_path, "g")
    script = Path(__file__).resolve().parents[2] / "scripts" / "sampled_draws.py"
    out = tmp_path / "draws.json"
    cmd = [sys.executable, str(script), str(tmp_path / "g"), "--draws", "30", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (entry,) = json.loads(out.read_text())["models"].values()
    assert entry["recorded"]["hr@10"] == pytest.approx(m["test"]["sampled"]["hr@10"], abs=1e-6)
    for n in ("99 negatives", "100 negatives"):
        hr = entry[n]["hr@10"]
        assert 0.0 < hr["p2.5"] <= hr["mean"] <= hr["p97.5"] < 1.0 and hr["std"] > 0.0
    # more negatives to beat: never an easier list
    assert entry["100 negatives"]["hr@10"]["mean"] <= entry["99 negatives"]["hr@10"]["mean"]
    bad = subprocess.run([*cmd[:2], str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "is not a finished run" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_fresh_negative_draws_are_distinct_unseen_and_uniform():
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "sampled_draws.py"
    spec = importlib.util.spec_from_file_location("sampled_draws", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seen = np.zeros((2, 21), dtype=bool)
    seen[:, 0] = True
    seen[0, 1:11] = True  # user 0 has seen items 1..10: its draws come from 11..20
    rng = np.random.default_rng(0)
    counts = np.zeros(21)
    for _ in range(2000):
        neg = mod.draw(seen, 5, rng)
        assert not np.take_along_axis(seen, neg, 1).any()
        assert all(len(set(row)) == 5 for row in neg.tolist())
        counts += np.bincount(neg[0], minlength=21)
    share = counts[11:] / counts[11:].sum()
    assert np.allclose(share, 0.1, atol=0.01)  # 10,000 draws over 10 items
