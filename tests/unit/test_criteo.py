"""dataset=criteo: the display-ads layout on the real sample, errors, options, and one run end to
end from shards and from memory."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from recbench.data.adapters.criteo import Criteo
from recbench.data.pipeline import prepare
from recbench.data.shards import dense_transform
from recbench.errors import ConfigError, DataNotFoundError, MalformedDataError
from tests import cli

ROOT = Path(__file__).resolve().parents[2]
QUIET = lambda m: None  # noqa: E731


def sample_dir() -> Path:
    base = os.environ.get("RECBENCH_DATA_DIR")
    if not base:
        pytest.skip("real data: set RECBENCH_DATA_DIR to the folder holding criteo-sample/")
    path = Path(base) / "criteo-sample"
    if not path.exists():
        pytest.skip(f"real data: {path} does not exist")
    return path


def criteo_cfg(root: Path, **over):
    cfg = OmegaConf.create({"dataset": OmegaConf.load(ROOT / "configs/dataset/criteo.yaml")})
    cfg.dataset.root = str(root)
    for k, v in over.items():
        OmegaConf.update(cfg, f"dataset.{k}", v)
    return cfg.dataset


def recbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = cli.run(list(args), cwd)
    assert proc.returncode == 0, f"recbench {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("criteo-small")
    spec = importlib.util.spec_from_file_location("make_criteo", ROOT / "scripts/make_criteo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write(folder / "train.txt", 1500, 11, 0.25, 600, 0.05)
    return folder


@pytest.mark.data
def test_real_sample_has_the_kaggle_layout_and_trains_end_to_end(tmp_path):
    root = sample_dir()
    frames = [f for _, _, f in Criteo(str(root)).chunks()]
    assert sum(f.height for f in frames) == 900
    assert sum(int(f["label"].sum()) for f in frames) == 176
    data = prepare(criteo_cfg(root), log=QUIET)
    assert sum(data.info["rows"].values()) == 900
    assert len(data.schema.dense) == 13 and len(data.schema.sparse) == 26
    assert sum(data.info["label_rate"][s] * data.info["rows"][s] for s in data.info["rows"]) == (
        pytest.approx(176)
    )
    run = tmp_path / "run"
    recbench(
        "train",
        "model=deepfm",
        "dataset=criteo",
        f"dataset.root={root}",
        "debug=fast",
        "threads=1",
        "logger=none",
        "record=false",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    m = json.loads((run / "metrics.json").read_text())
    assert m["dataset"] == "criteo" and m["test"]["rows"] == data.info["rows"]["test"]
    assert 0 < m["test"]["auc"] < 1


def test_gzip_and_glob_read_the_same_rows(small_file, tmp_path):
    plain = Criteo(str(small_file))
    rows = [f for _, _, f in plain.chunks()]
    (tmp_path / "day_0.gz").write_bytes(gzip.compress((small_file / "train.txt").read_bytes()))
    (tmp_path / "notes.md").write_text("not data")
    zipped = Criteo(str(tmp_path), chunk_mb=0.0625)  # many chunks
    assert [p.name for p in zipped.files()] == ["day_0.gz"]
    got = [f for _, _, f in zipped.chunks()]
    assert len(got) > 1
    import polars as pl

    assert pl.concat(got).equals(pl.concat(rows))
    assert Criteo(str(tmp_path), files="day_*.gz").files() == zipped.files()


def test_a_malformed_line_is_named_with_file_and_line(small_file, tmp_path):
    lines = (small_file / "train.txt").read_text().splitlines()
    bad = lines[:5] + ["\t".join(lines[5].split("\t")[:-1])] + lines[6:20]
    (tmp_path / "train.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(MalformedDataError, match=r"train.txt:6: 39 tab-separated fields"):
        list(Criteo(str(tmp_path)).chunks())
    fields = lines[2].split("\t")
    fields[14] = "zz-not-hex"
    (tmp_path / "train.txt").write_text("\n".join([*lines[:2], "\t".join(fields)]) + "\n")
    with pytest.raises(MalformedDataError, match=r"train.txt:3: C1='zz-not-hex'"):
        list(Criteo(str(tmp_path)).chunks())
    fields = lines[0].split("\t")
    fields[0] = "2"
    (tmp_path / "train.txt").write_text("\t".join(fields) + "\n")
    with pytest.raises(MalformedDataError, match=r"train.txt:1: label"):
        list(Criteo(str(tmp_path)).chunks())


def test_missing_folder_and_wrong_options_say_what_to_do(tmp_path):
    with pytest.raises(DataNotFoundError, match="dataset.root"):
        Criteo(str(tmp_path / "nowhere")).files()
    with pytest.raises(DataNotFoundError, match="make_criteo"):
        Criteo(str(tmp_path)).files()
    with pytest.raises(ConfigError, match="dense_transform"):
        prepare(criteo_cfg(tmp_path, **{"features.dense_transform": "sqrt"}), log=QUIET)
    synthetic = OmegaConf.create(
        {"dataset": OmegaConf.load(ROOT / "configs/dataset/synthetic.yaml")}
    ).dataset
    synthetic.storage = "shards"
    with pytest.raises(ConfigError, match="dataset.storage=shards"):
        prepare(synthetic, log=QUIET)


def test_dense_transforms_follow_their_definitions():
    x = np.array([-2.0, 0.0, 1.0, 2.0, 3.0, 10.0, 100.0, np.nan])
    sq = dense_transform(x, "log_squared")
    # floor(log(x)^2) above 2; 3 -> floor(1.2069) = 1, 10 -> floor(5.3019) = 5, 100 -> 21
    assert sq[:7].tolist() == [-2.0, 0.0, 1.0, 2.0, 1.0, 5.0, 21.0] and np.isnan(sq[7])
    lp = dense_transform(x, "log1p")
    assert lp[:7] == pytest.approx(
        [0.0, 0.0, np.log(2), np.log(3), np.log(4), np.log(11), np.log(101)]
    )


def test_vocabulary_min_count_and_hash_buckets(small_file, tmp_path, monkeypatch):
    monkeypatch.setenv("RECBENCH_CACHE_DIR", str(tmp_path))
    counted = prepare(criteo_cfg(small_file, **{"features.min_count": 1}), log=QUIET)
    rare = prepare(criteo_cfg(small_file, **{"features.min_count": 5}), log=QUIET)
    for a, b in zip(counted.schema.sparse, rare.schema.sparse, strict=True):
        assert b.vocab_size <= a.vocab_size
    assert sum(a.vocab_size for a in counted.schema.sparse) > sum(
        b.vocab_size for b in rare.schema.sparse
    )
    # min_count=1: every training value has its own row, so no training row is OOV
    assert (counted.splits["train"]["sparse"].numpy() > 1).all()
    hashed = prepare(criteo_cfg(small_file, **{"features.hash_buckets": 50}), log=QUIET)
    assert {f.vocab_size for f in hashed.schema.sparse} == {52}
    codes = hashed.splits["test"]["sparse"].numpy()
    assert codes.min() >= 2 and codes.max() <= 51
    dense = counted.splits["train"]["dense"].numpy()
    # standardised on the training split (missing values sit at the mean, 0)
    assert np.abs(dense.mean(0)).max() < 0.05 and (dense.std(0) <= 1.0 + 1e-4).all()


def test_shard_fed_training_checkpoint_scores_the_same_from_memory(small_file, tmp_path):
    """Train from shards; evaluate that checkpoint from shards and from memory: same metrics."""
    base = [
        "model=deepfm",
        "dataset=criteo",
        f"dataset.root={small_file}",
        "dataset.shards.rows=400",
        "dataset.shards.block_rows=64",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "threads=1",
        "logger=none",
        "record=false",
        "batch_size=128",
    ]
    recbench("train", *base, f"hydra.run.dir={tmp_path / 'fit'}", cwd=tmp_path)
    fit = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    assert fit["oracle"]["auc"] > fit["test"]["auc"] > 0.5  # learnt something, below the truth
    evaluate = [*base, "fit=false", f"ckpt_path={fit['checkpoint']}"]
    recbench(
        "train",
        *evaluate,
        "dataset.storage=memory",
        f"hydra.run.dir={tmp_path / 'm'}",
        cwd=tmp_path,
    )
    mem = json.loads((tmp_path / "m" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert mem[split]["rows"] == fit[split]["rows"]
        for k in ("auc", "logloss"):
            assert mem[split][k] == pytest.approx(fit[split][k], abs=1e-6), (split, k)
    shutil.rmtree(tmp_path / "fit" / "checkpoints", ignore_errors=True)


def test_the_user_item_tasks_refuse_a_log_without_users_or_items(small_file, tmp_path):
    """task=topk / rating / next_item on Criteo used to stop with AttributeError ('Criteo'
    object has no attribute 'load'); each now says why and what to train instead."""
    from hydra import compose, initialize_config_dir

    from recbench.cli import config_dir
    from recbench.tasks.next_item import NextItemTask
    from recbench.tasks.rating import RatingTask
    from recbench.tasks.topk import TopKTask

    cases = {"topk": TopKTask, "rating": RatingTask, "next_item": NextItemTask}
    for task, cls in cases.items():
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(
                "train", overrides=[f"task={task}", "dataset=criteo", f"dataset.root={small_file}"]
            )
        with pytest.raises(ConfigError, match=f"no user or item ids, so task={task} has"):
            cls.prepare(cfg, log=QUIET)
