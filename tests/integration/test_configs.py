"""Every model and experiment config composes, trains a few batches end to end, and records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recbench.cli import config_dir
from recbench.report import metric_value
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


def _served_task(tmp_path: Path, model: str) -> list[str]:
    """``task=<t>`` for the first task the model serves, unless its config already picks one."""
    from hydra.utils import get_class

    from recbench.tasks.base import model_tasks

    cfg = compose_train(tmp_path, [f"model={model}"])
    served = model_tasks(get_class(cfg.model._target_))
    if get_class(cfg.task._target_).name in served:
        return []
    task = next((t for t in ("ctr", "topk", "next_item", "rl") if t in served), served[0])
    if task == "rating":  # the synthetic world has no explicit ratings: a small MovieLens folder
        from tests.unit.test_rating import write_ml100k

        write_ml100k(tmp_path / "ml")
        return ["task=rating", "dataset=movielens-100k", f"dataset.root={tmp_path / 'ml'}"]
    return [f"task={task}"]


# configs that need other runs' outputs; their own tests train those first
NEEDS_RUNS = {"neumf_pretrained": "tests/integration/test_topk_train.py"}


@pytest.mark.parametrize("model", [m for m in MODELS if m not in NEEDS_RUNS])
def test_every_model_config_trains_end_to_end(tmp_path, model):
    task = _served_task(tmp_path, model)
    cfg = compose_train(tmp_path, [f"model={model}", f"+model_name={model}", *task, *TINY])
    run(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["model"] == model
    value = metric_value(m["test"], m["primary_metric"])
    assert value is not None and math.isfinite(value), (m["primary_metric"], m["test"])
    assert m["params"] is not None and m["params"] >= 0


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
    allowed = {"model", "optimizer", "callbacks"}
    assert sections and sections <= allowed, f"{path} changes {sections}"

    def leaves(node, prefix: str) -> dict:
        if not isinstance(node, dict):
            return {prefix: node}
        return {
            k: v for key, sub in node.items() for k, v in leaves(sub, f"{prefix}.{key}").items()
        }

    changed = []
    for section in sorted(sections):
        new, old = (
            leaves(OmegaConf.to_container(c[section], resolve=False), section)
            for c in (tuned, plain)
        )
        assert set(new) == set(old), f"{path} adds keys to {section}: {set(new) - set(old)}"
        changed += [k for k in new if new[k] != old[k]]
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
