"""Planning a `recbench compare`: the models that serve its task, each (model, seed) run's
overrides, composed config and run key, and the parts a pretrained model starts from (trained
first, or reused from the results store while their weights are still where it says)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from recbench.compare_runs import Job, quote
from recbench.errors import ConfigError
from recbench.results import FINISHED, moved_away, read_records, run_key

# compare's own keys: never passed on to the train runs
COMPARE_KEYS = (
    "lineage",
    "seeds",
    "models",
    "report_only",
    "extra",
    "bootstrap",
    "jobs",
    "fork",
)
# train keys compare sets per run: a user value for them would be silently replaced
PER_RUN_KEYS = {"model": "models=[...]", "seed": "seeds=<n> or seeds=[...]"}


def _key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def compare_label(lineage: object, models: object, overrides: object) -> str:
    """The name a compare goes by (its folder, its report): the lineage chosen, or ``custom``
    for ``models=[...]`` without ``lineage=`` (not the default lineage's path)."""
    if models and not any(_key_of(str(o)) == "lineage" for o in overrides or ()):
        return "custom"
    return str(lineage or "custom")


def train_overrides(task_overrides: list[str]) -> list[str]:
    """The command line's train overrides: everything but compare's own keys and the dataset
    choice (compare passes ``dataset=<choice>`` itself)."""
    out = []
    for o in task_overrides:
        key = _key_of(o)
        if key.split(".")[0] in COMPARE_KEYS or key == "dataset":
            continue
        if key in PER_RUN_KEYS:
            raise ConfigError(f"compare sets `{key}` for each run; use {PER_RUN_KEYS[key]}")
        out.append(o)
    return out


def seed_list(seeds: Any) -> list[int]:
    if isinstance(seeds, ListConfig | list | tuple):
        values = [int(s) for s in seeds]
    else:
        if int(seeds) < 1:
            raise ConfigError(f"seeds must be >= 1 or a list of seeds, got {seeds}")
        values = list(range(1, int(seeds) + 1))
    if len(set(values)) != len(values):
        raise ConfigError(f"seeds repeat: {values}")
    return values


def model_list(cfg: DictConfig, configs: TrainConfigs | None = None) -> list[str]:
    """The compare's models that serve its task, in lineage order."""
    return _serving(_model_names(cfg), cfg, configs)


def _model_names(cfg: DictConfig) -> list[str]:
    given = cfg.get("models")
    if given is not None and len(given) == 0:  # not null: an empty list is no models at all
        raise ConfigError(
            "models=[] names no model: give models=[lr,fm], or leave models out (null) to "
            "compare the lineage's models"
        )
    models = given or (cfg.get("lineage") or {}).get("models")
    if not models:
        raise ConfigError("no models: pick a lineage (lineage=ctr) or give models=[lr,fm]")
    names = [str(m) for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models repeat: {names}")
    return names


def _serving(names: list[str], cfg: DictConfig, configs: TrainConfigs | None = None) -> list[str]:
    """``names`` without the models whose class does not serve the chosen task (a lineage
    such as cf mixes rating and ranking models), with a printed note; a model whose config
    does not compose is kept, so its run reports why."""
    from hydra.errors import HydraException
    from hydra.utils import get_class
    from omegaconf.errors import OmegaConfBaseException

    from recbench.tasks.base import model_tasks

    target = (cfg.get("task") or {}).get("_target_")
    if not target:
        return names
    task = getattr(get_class(str(target)), "name", "") or str(target)
    keep, dropped = [], []
    tasks: dict[str, int] = {}  # the tasks the dropped models serve, by how many serve each
    for m in names:
        try:
            try:
                model_cfg = configs.base(m) if configs else _compose_train([f"model={m}"])
            except (HydraException, OmegaConfBaseException, ValueError, TypeError):
                # an override another model of the lineage takes: the model alone says its class
                model_cfg = _compose_train([f"model={m}"])
            served = model_tasks(get_class(str(model_cfg.model._target_)))
        except (HydraException, OmegaConfBaseException, ImportError, ValueError, TypeError):
            served = (task,)
        (keep if task in served else dropped).append(m)
        if task not in served:
            for t in served:
                tasks[t] = tasks.get(t, 0) + 1
    if dropped and not keep:
        best = sorted(tasks, key=lambda t: -tasks[t])
        raise ConfigError(
            f"no model of {names} serves task={task}; they serve "
            f"{', '.join(f'task={t}' for t in best)}: add task={best[0]} "
            f"(or another of those) to the command"
        )
    if dropped:
        sys.stderr.write(
            f"note: task={task} leaves out {', '.join(dropped)} (they do not serve it; "
            f"`recbench models` lists what each model serves)\n"
        )
    if not keep:
        raise ConfigError(f"no model of {names} serves task={task}")
    return keep


class TrainConfigs:
    """Each model's train config under the compare's overrides, composed once and shared by
    the task filter, the pretraining plan and every seed's job (a compose costs ~0.1-0.2 s, and
    a compare used to pay three per model before its first run could start)."""

    def __init__(self, common: list[str], hydra_overrides: list[str]) -> None:
        self._overrides = [*common, *hydra_overrides]
        self._composed: dict[str, DictConfig | Exception] = {}

    def base(self, model: str) -> DictConfig:
        """``model``'s config without seed or run folder; raises what composing it raised."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if model not in self._composed:
            try:
                self._composed[model] = _compose_train([f"model={model}", *self._overrides])
            except (HydraException, OmegaConfBaseException, ValueError, TypeError) as exc:
                self._composed[model] = exc
        found = self._composed[model]
        if isinstance(found, Exception):
            raise found
        return found


def _compose_train(overrides: list[str]) -> DictConfig:
    """The train config for ``overrides``, composed the way ``recbench train`` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from recbench.cli import config_dir

    if GlobalHydra.instance().is_initialized():  # inside `recbench compare` (hydra.main)
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def plan(
    models: list[str],
    seeds: list[int],
    common: list[str],
    hydra_overrides: list[str],
    out_dir: Path,
    configs: TrainConfigs | None = None,
) -> list[Job]:
    """One job per (model, seed), model-major, each with its run key (or why it has none)."""
    from hydra.errors import HydraException
    from hydra.utils import get_class, instantiate
    from omegaconf.errors import OmegaConfBaseException

    from recbench.data.pipeline import cache_key

    data_keys: dict[str, str] = {}
    jobs = []
    planned: dict[tuple[str, int], Job] = {}
    configs = configs or TrainConfigs(common, hydra_overrides)
    for m, parts in _with_parts(models, common, hydra_overrides, configs):
        for s in seeds:
            run_dir = out_dir / "runs" / m / f"seed_{s}"
            job = Job(m, s, [f"model={m}", f"seed={s}", *common], run_dir)
            # a pretrained model starts from its parts' runs of the same seed (planned first)
            job.overrides += [
                f"model.pretrained.{slot}={quote(_part_dir(planned[(part, s)]))}"
                for slot, part in parts.items()
            ]
            job.parts = [planned[(part, s)] for part in parts.values()]
            try:
                if parts:  # the parts' run folders are overrides of their own
                    cfg = _compose_train(
                        [*job.overrides, f"paths.run_dir={quote(str(run_dir))}", *hydra_overrides]
                    )
                else:
                    # only `seed` and the run folder differ from the model's composed config,
                    # so they are set on a copy (what composing with them gives)
                    cfg = copy.deepcopy(configs.base(m))
                    cfg.seed = s
                    cfg.paths.run_dir = str(run_dir)
                # a task that prepares its own data (top-K, rating, ...) keys it itself
                task_key = getattr(get_class(str(cfg.task._target_)), "data_key", None)
                ds = json.dumps(
                    [
                        OmegaConf.to_container(c, resolve=True)
                        for c in ([cfg.dataset] if task_key is None else [cfg.dataset, cfg.task])
                    ],
                    sort_keys=True,
                    default=str,
                )
                if ds not in data_keys:  # hashing data files is cheap but not free
                    data_keys[ds] = (
                        cache_key(cfg.dataset, instantiate(cfg.dataset.adapter))
                        if task_key is None
                        else task_key(cfg)
                    )
                job.data_key, job.dataset = data_keys[ds], str(cfg.dataset.name)
                job.key = run_key(cfg, job.data_key)
                job.results = str(cfg.paths.results)
            except (
                HydraException,
                OmegaConfBaseException,
                ImportError,
                ValueError,
                TypeError,
            ) as exc:
                job.error = f"{type(exc).__name__}: {exc}"
            jobs.append(job)
            planned[(m, s)] = job
    _refuse_twins(jobs)
    return jobs


def _refuse_unknown(jobs: list[Job]) -> None:
    """A name in ``models`` with no model config is a typo, not a model that fails: refuse the
    compare before the other models train (a broken config of a model that exists still trains
    the others and is reported)."""
    unknown = sorted(
        {j.model for j in jobs if j.error and f"Could not find 'model/{j.model}'" in j.error}
    )
    if unknown:
        raise ConfigError(
            f"models=[...] names {', '.join(unknown)}, which no model config matches; nothing "
            "was trained. `recbench models` lists the models; a config of your own goes in "
            "<folder>/model/<name>.yaml, <folder> in RECBENCH_CONFIG_PATH (or "
            "hydra.searchpath=[file://<folder>])"
        )


def _refuse_unreported(models: list[str], configs: TrainConfigs) -> None:
    """A compare finds the runs it trains in the results store and reports their test metrics:
    under ``record=false`` each run would train, miss the store and be reported failed; under
    ``test=false`` the report would be empty and every run trained again by the next compare."""
    why = {
        "record": "keeps the runs out of the results store, where compare finds them (each "
        "would be reported failed after training)",
        "test": "leaves the runs without the test metrics compare reports (the report would be "
        "empty, and every run trained again next time)",
    }
    for m in models:
        try:
            cfg = configs.base(m)
        except Exception:  # noqa: BLE001 - a config that does not compose is reported by plan
            continue
        for key, what in why.items():
            if not cfg.get(key, True):
                raise ConfigError(
                    f"compare cannot train with {key}=false (model={m}): it {what}; drop "
                    f"{key}=false, or use recbench train for single runs"
                )


def _refuse_twins(jobs: list[Job]) -> None:
    """Two models whose runs are one run (same config and data, so the same run key): the
    overrides made them the same model (``extra=['model.gamma=0.4']`` turns DN into DDQN). The
    store could not tell their runs apart, so the compare refuses before training."""
    seen: dict[str, Job] = {}
    for job in jobs:
        other = seen.setdefault(job.key, job) if job.key else job
        if other is not job and other.model != job.model:
            raise ConfigError(
                f"model={other.model} and model={job.model} are the same run under these "
                f"overrides (seed {job.seed}: the same config on the same data), so their "
                "comparison would compare a model with itself; drop one from models=[...] or "
                "change the override that made them equal"
            )


def _with_parts(
    models: list[str],
    common: list[str],
    hydra_overrides: list[str],
    configs: TrainConfigs | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """``models`` in plan order, each with the parts it is pretrained from ({slot: model}, from
    its config's ``pretrained.from_models`` where the slot is empty); a part missing from
    ``models`` is planned before the first model that needs it."""
    configs = configs or TrainConfigs(common, hydra_overrides)
    order: list[tuple[str, dict[str, str]]] = []
    for m in models:
        parts: dict[str, str] = {}
        try:
            pre = configs.base(m).model.get("pretrained")
            if pre and pre.get("from_models"):
                parts = {str(k): str(v) for k, v in pre.from_models.items() if not pre.get(k)}
        except Exception:  # noqa: BLE001 - a config that does not compose is reported by plan
            parts = {}
        for part in parts.values():
            if part not in [o[0] for o in order]:
                order.append((part, {}))
        if m not in [o[0] for o in order]:
            order.append((m, parts))
    return order


def _part_dir(job: Job) -> str:
    """Where a part's weights are: the store's finished run with the part's key (reused), else
    the directory this compare trains it into."""
    results = getattr(job, "results", None)
    if job.key and results:
        found = read_records(results, run_key=job.key, status=FINISHED, stale=False)
        if found and _weights_kept(found[-1]):
            return str(found[-1]["run_dir"])
    return str(job.run_dir)


def _weights_kept(record: dict[str, Any]) -> bool:
    """Whether a stored run's folder still holds its weights: not deleted, not taken over."""
    ckpt = record.get("checkpoint")
    return bool(record.get("run_dir") and ckpt and Path(str(ckpt)).exists()) and not moved_away(
        record
    )


__all__ = [
    "COMPARE_KEYS",
    "PER_RUN_KEYS",
    "TrainConfigs",
    "model_list",
    "plan",
    "seed_list",
    "train_overrides",
]
