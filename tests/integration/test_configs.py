"""Every model and experiment config composes, trains a few batches end to end, and records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recbench.cli import config_dir
from recbench.train import run

CONFIGS = Path(config_dir())
MODELS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
TINY = ["++dataset.world.n_users=120", "debug=fast", "record=false", "threads=1", "logger=none"]


def compose_train(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.run_dir={tmp_path}"])


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_trains_end_to_end(tmp_path, model):
    cfg = compose_train(tmp_path, [f"model={model}", f"+model_name={model}", *TINY])
    run(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["model"] == model
    assert 0.0 < m["test"]["auc"] < 1.0 and m["test"]["rows"] > 0
    assert m["params"] > 0


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_composes_and_runs(tmp_path, experiment, ml100k):
    cfg = compose_train(
        tmp_path,
        [f"experiment={experiment}", "debug=fast", "record=false", "threads=1", "logger=none"],
    )
    run(cfg)
    assert (tmp_path / "metrics.json").exists()


TUNED = sorted(p.relative_to(CONFIGS / "tuned") for p in (CONFIGS / "tuned").glob("*/*.yaml"))


@pytest.mark.parametrize("path", TUNED, ids=str)
def test_tuned_configs_apply_to_their_dataset_and_model_only(tmp_path, path):
    """configs/tuned/<dataset>/<model>.yaml changes that model's keys (and its optimizer's) on
    that dataset and nothing else; a key a tuned file sets must exist already (no silent typo),
    and a command-line override still wins."""
    dataset, model = path.parent.name, path.stem
    assert (CONFIGS / "dataset" / f"{dataset}.yaml").exists()
    assert (CONFIGS / "model" / f"{model}.yaml").exists()
    tuned = compose_train(tmp_path, [f"dataset={dataset}", f"model={model}"])
    plain = compose_train(tmp_path, [f"dataset={dataset}", f"model={model}", "~tuned"])
    sections = {k for k in tuned if tuned[k] != plain[k]}
    assert sections and sections <= {"model", "optimizer"}, f"{path} changes {sections}"
    changed = []
    for section in sorted(sections):
        assert set(tuned[section]) == set(plain[section]), f"{path} adds keys to {section}"
        changed += [
            f"{section}.{k}" for k in tuned[section] if tuned[section][k] != plain[section][k]
        ]
    # another model on this dataset, and this model on a dataset without a tuned file for it,
    # compose as if no tuned file existed
    assert compose_train(tmp_path, [f"dataset={dataset}", "model=lr"]) == compose_train(
        tmp_path, [f"dataset={dataset}", "model=lr", "~tuned"]
    )
    untuned = next(
        d.stem
        for d in sorted((CONFIGS / "dataset").glob("*.yaml"))
        if not (CONFIGS / "tuned" / d.stem / f"{model}.yaml").exists()
    )
    elsewhere = [f"dataset={untuned}", f"model={model}"]
    assert compose_train(tmp_path, elsewhere) == compose_train(tmp_path, [*elsewhere, "~tuned"])
    for key in changed:
        again = compose_train(tmp_path, [f"dataset={dataset}", f"model={model}", f"{key}=0.5"])
        assert OmegaConf.select(again, key) == 0.5
