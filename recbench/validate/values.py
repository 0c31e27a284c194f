"""Value rules by key name: the types and ranges of well-known keys wherever they appear (model,
optimizer, trainer, callbacks, task, dataset ...), over every resolved leaf of the config."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from recbench.validate.problems import Problems, _fmt

SKIP_NODES = {"hydra", "paths"}  # Hydra's own node; paths are checked as folders (folders.py)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and not (isinstance(v, float) and math.isnan(v))


def _int_at_least(lo: int, none_ok: bool = True) -> Callable[[Any], str | None]:
    def rule(v: Any) -> str | None:
        if v is None and none_ok:
            return None
        if not _is_int(v):
            return f"must be an integer >= {lo}"
        return None if v >= lo else f"must be >= {lo}"

    return rule


def _threads(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and v.strip().lower() == "auto"):
        return None
    if not _is_int(v) or v < 1:
        return "must be an integer >= 1, auto (the cores free of other work) or null"
    return None


def _number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def rule(v: Any) -> str | None:
        if v is None:
            return None
        lo_s = f"{'>' if lo_open else '>='} {lo:g}"
        rng = (
            lo_s
            if hi is None
            else f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        )
        if not _is_number(v):
            return f"must be a number {rng}"
        ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
        return None if ok else f"must be {rng}"

    return rule


def _positive_int_list(v: Any) -> str | None:
    if v is None or (_is_int(v) and v >= 1):  # one width
        return None
    if not isinstance(v, list | tuple):
        return "must be a list of layer widths, e.g. [256, 128]"
    if not all(_is_int(x) and x >= 1 for x in v):
        return "must be a list of integers >= 1 (layer widths)"
    return None


def _cutoffs(v: Any) -> str | None:
    if isinstance(v, list | tuple) and v and all(_is_int(x) and x >= 1 for x in v):
        return None
    return "must be a list of ranking cut-offs >= 1, e.g. [5, 10, 20]"


def _limit_batches(v: Any) -> str | None:
    if v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0):
        return None
    return "must be an integer number of batches >= 0 or a fraction in [0, 1]"


def _seed(v: Any) -> str | None:
    if v is None:
        return None
    if not _is_int(v) or not 0 <= v < 2**32:
        return "must be an integer in [0, 2**32)"
    return None


def _duration(v: Any) -> bool:
    """A Lightning time span written as text: DD:HH:MM:SS."""
    return isinstance(v, str) and re.fullmatch(r"\d+:\d\d:\d\d:\d\d", v.strip()) is not None


def _val_check_interval(v: Any) -> str | None:
    if v is None or (_is_int(v) and v >= 1) or _duration(v):
        return None
    if isinstance(v, float) and 0.0 < v <= 1.0:
        return None
    return (
        "must be a number of training batches >= 1, a fraction of an epoch in (0, 1], or a "
        "time span DD:HH:MM:SS"
    )


def _max_epochs(v: Any) -> str | None:
    # -1: until a stopping callback says so; 0 is refused by _check_fit unless fit=false
    if v is None or (_is_int(v) and v >= -1):
        return None
    return "must be an integer >= 1 (or -1: until early stopping stops it)"


# the split kinds of recbench.data.splits (named here: importing it imports polars)
SPLIT_KINDS = ("random", "temporal", "user_temporal", "leave_one_out")


def _split_kind(v: Any) -> str | None:
    if v in SPLIT_KINDS:
        return None
    close = difflib.get_close_matches(str(v), SPLIT_KINDS, n=1, cutoff=0.6)
    mean = f" (did you mean {close[0]}?)" if close else ""
    return f"must be one of {', '.join(SPLIT_KINDS)}{mean}"


def _split_ratios(v: Any) -> str | None:
    if v is None:
        return None
    if (
        isinstance(v, list | tuple)
        and len(v) == 3
        and all(_is_number(r) and r >= 0 for r in v)
        and abs(sum(v) - 1.0) <= 1e-6
    ):
        return None
    return "must be three shares >= 0 of train, val and test summing to 1, e.g. [0.8, 0.1, 0.1]"


def _model_names(v: Any) -> str | None:
    if v is None or (isinstance(v, list) and all(isinstance(m, str) and m for m in v)):
        return None
    if isinstance(v, str) and v:
        return f"must be a list of model names, e.g. models=[{v}]"
    return "must be a list of model names, e.g. models=[lr,fm]"


# Rules by the key's own name, wherever it appears (model, optimizer, trainer, callbacks, task,
# dataset ...). Suffix rules follow.
NAME_RULES: dict[str, Callable[[Any], str | None]] = {
    "batch_size": _int_at_least(1, none_ok=False),
    "eval_batch_size": _int_at_least(1, none_ok=False),
    "chunk_users": _int_at_least(1),  # users an evaluation chunk scores; null: the task's own
    "dim": _int_at_least(1),
    "max_epochs": _max_epochs,
    "min_epochs": _int_at_least(0),
    "max_steps": lambda v: (
        None
        if v is None or (_is_int(v) and v >= -1)
        else "must be an integer >= 1 (or -1: no step limit)"
    ),
    "patience": _int_at_least(0),
    "threads": _threads,
    "jobs": lambda v: (
        None
        if (isinstance(v, str) and v.strip().lower() == "auto") or (_is_int(v) and v >= 1)
        else "must be an integer >= 1 or auto (one run per free CPU core)"
    ),
    "fork": lambda v: (
        None
        if isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() == "auto")
        else "must be auto, true or false (false: every run in a fresh interpreter)"
    ),
    "seeds": lambda v: (
        None
        if (_is_int(v) and v >= 1)
        or (isinstance(v, list) and v and all(_seed(s) is None and s is not None for s in v))
        else "must be a number of seeds >= 1 or a list of seeds, integers in [0, 2**32)"
    ),
    "num_heads": _int_at_least(1),
    "num_layers": _int_at_least(1),
    "num_experts": _int_at_least(1),
    "num_cross": _int_at_least(1),
    "num_nodes": _int_at_least(1),
    "log_every_n_steps": _int_at_least(1),
    "num_sanity_val_steps": _int_at_least(-1),
    "save_top_k": _int_at_least(-1),
    "steps": _int_at_least(1),
    "warmup_steps": _int_at_least(0),
    "lr": _number(0.0, lo_open=True),
    "weight_decay": _number(0.0),
    "dropout": _number(0.0, 1.0, hi_open=True),
    "gradient_clip_val": _number(0.0),
    "eps": _number(0.0, lo_open=True),
    "label_smoothing": _number(0.0, 1.0, hi_open=True),
    "seed": _seed,
    "hidden": _positive_int_list,
    "ks": _cutoffs,
    "sampled": _int_at_least(0),  # evaluation negatives per user (0: none)
    "max_len": _int_at_least(0),  # a history's or sequence's length (0: none)
    "hash_buckets": _int_at_least(0),  # rows each field is hashed into (0: a vocabulary)
    "min_len": _int_at_least(0),
    "check_val_every_n_epoch": _int_at_least(1),
    "val_check_interval": _val_check_interval,
    "accumulate_grad_batches": _int_at_least(1, none_ok=False),
    "max_time": lambda v: (
        None if v is None or _duration(v) else "must be a time span DD:HH:MM:SS, e.g. 00:12:00:00"
    ),
    "limit_train_batches": _limit_batches,
    "limit_val_batches": _limit_batches,
    "limit_test_batches": _limit_batches,
    "monitor_mode": lambda v: None if v in ("min", "max") else "must be min or max",
    "models": _model_names,  # compare's models and a lineage's
    "force": lambda v: None if isinstance(v, bool) else "must be true or false",
    "device_resident": lambda v: (
        None if v in ("auto", True, False) else "must be auto, true or false"
    ),
}
SUFFIX_RULES: tuple[tuple[str, Callable[[Any], str | None]], ...] = (
    ("_batch_size", _int_at_least(1)),
    ("_max_len", _int_at_least(1)),
    ("_dim", _int_at_least(1)),
    ("_hidden", _positive_int_list),
    ("_dropout", _number(0.0, 1.0, hi_open=True)),
    ("_lr", _number(0.0, lo_open=True)),
    ("_reg", _number(0.0)),
    ("_seed", _seed),
    ("_temperature", _number(0.0, lo_open=True)),
)
EXAMPLES = {"lr": "1e-3", "dropout": "0.1", "weight_decay": "0.0", "patience": "2"}
# rules by path: every leaf under a path whose names the user chooses (a bucketed column's
# name), and keys whose names are too common to hold one meaning everywhere
PREFIX_RULES: tuple[tuple[str, Callable[[Any], str | None]], ...] = (
    ("bootstrap.resamples", _int_at_least(1, none_ok=False)),
    ("bootstrap.level", _number(0.0, 1.0, lo_open=True, hi_open=True)),  # a coverage
    ("dataset.split.kind", _split_kind),
    ("task.split.kind", _split_kind),
    ("dataset.split.ratios", _split_ratios),
    ("task.split.ratios", _split_ratios),
    (
        "task.eval.blocked",
        lambda v: None if v in ("auto", True, False) else "must be auto, true or false",
    ),
    (
        "dataset.features.buckets.",
        lambda v: (
            None
            if _is_int(v) and v >= 2
            else "must be a number of quantile buckets of the training split, an integer >= 2"
        ),
    ),
)


def _rule_for(name: str) -> Callable[[Any], str | None] | None:
    if name in NAME_RULES:
        return NAME_RULES[name]
    return next((rule for suffix, rule in SUFFIX_RULES if name.endswith(suffix)), None)


def _walk(node: Any, path: str, problems: Problems, visit: Callable[[str, str, Any], None]):
    """Call ``visit(path, name, value)`` on every resolved leaf and list; unresolvable or missing
    values become problems instead."""
    if isinstance(node, DictConfig):
        items = list(node.keys())
    else:
        items = list(range(len(node)))
    for k in items:
        key = f"{path}.{k}" if path and isinstance(k, str) else (f"{path}[{k}]" if path else k)
        if path == "" and k in SKIP_NODES:
            continue
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, k):
            problems.add(key, f"{key} must be set (it is ??? in the config): add {key}=<value>")
            continue
        try:
            v = node[k]
        except Exception as exc:  # an interpolation that cannot be resolved
            problems.add(key, f"{key} cannot be resolved: {exc}".split("\n")[0])
            continue
        if isinstance(v, DictConfig):
            _walk(v, key, problems, visit)
        elif isinstance(v, ListConfig):
            try:
                plain = OmegaConf.to_container(v, resolve=True)
            except Exception as exc:
                problems.add(key, f"{key} cannot be resolved: {exc}".split("\n")[0])
                continue
            visit(key, str(k), plain)
        else:
            visit(key, str(k), v)


def _check_values(cfg: DictConfig, problems: Problems) -> None:
    def visit(key: str, name: str, value: Any) -> None:
        prefixed = (rule for prefix, rule in PREFIX_RULES if key.startswith(prefix))
        rule = next(prefixed, None) or _rule_for(name)
        if rule is None:
            return
        why = rule(value)
        if why:
            eg = EXAMPLES.get(name)
            hint = f", e.g. {key}={eg}" if eg else ""
            problems.add(key, f"{key}={_fmt(value)}: {why}{hint}")

    _walk(cfg, "", problems, visit)
    _check_sampled(cfg, problems)
    _check_validation(cfg, problems)
    _check_callback_monitors(cfg, problems)


def _check_validation(cfg: DictConfig, problems: Problems) -> None:
    """A fit whose trainer never validates: early stopping and the best checkpoint follow a
    ``val/`` metric, so Lightning would fail after the first epoch, or the run would end
    unvalidated and record the test of its last weights without a best epoch."""
    t = cfg.get("trainer")
    monitor = str(cfg.get("monitor") or "")
    if not (isinstance(t, DictConfig) and cfg.get("fit", True) and monitor.startswith("val/")):
        return
    try:
        limit = t.get("limit_val_batches")
        every = t.get("check_val_every_n_epoch")
        epochs = t.get("max_epochs")
    except Exception:  # an unresolvable value: listed by the walk already
        return
    follows = f"which early stopping and the best checkpoint follow (monitor={monitor})"
    if _is_number(limit) and limit == 0:
        problems.add(
            "trainer.limit_val_batches",
            f"trainer.limit_val_batches={_fmt(limit)} skips validation, {follows}: drop it (all "
            "batches), or give some, e.g. trainer.limit_val_batches=0.25",
        )
    elif _is_int(every) and _is_int(epochs) and 1 <= epochs < every:
        problems.add(
            "trainer.check_val_every_n_epoch",
            f"trainer.check_val_every_n_epoch={every} validates first after epoch {every}, past "
            f"trainer.max_epochs={epochs}, so the run would never validate, {follows}: set "
            f"trainer.check_val_every_n_epoch={epochs} or fewer",
        )


def _check_callback_monitors(cfg: DictConfig, problems: Problems) -> None:
    """Every callback's ``mode`` is min or max; the checkpoint callback ranks epochs as
    ``monitor`` / ``monitor_mode`` do (the record's best epoch follows those, the tested
    checkpoint the callback); early stopping on the same metric follows the same direction."""
    callbacks = cfg.get("callbacks")
    if not isinstance(callbacks, DictConfig):
        return
    monitor, mode = cfg.get("monitor"), cfg.get("monitor_mode")
    for name in callbacks:
        try:
            node = callbacks[name]
            if not isinstance(node, DictConfig) or not {"mode", "monitor"} <= set(node):
                continue
            target, its_monitor, its_mode = (
                str(node.get("_target_", "")),
                node.get("monitor"),
                node.mode,
            )
        except Exception:  # an unresolvable value: listed by the walk already
            continue
        key = f"callbacks.{name}"
        if its_mode not in ("min", "max"):
            problems.add(f"{key}.mode", f"{key}.mode={_fmt(its_mode)}: must be min or max")
            continue
        if monitor is None or mode not in ("min", "max"):
            continue
        checkpoint = target.endswith("ModelCheckpoint")
        if checkpoint and node.get("save_top_k") == 0 and cfg.get("fit", True):
            problems.add(
                f"{key}.save_top_k",
                f"{key}.save_top_k=0 keeps no best checkpoint, so the test would run on the last "
                "epoch's weights while the record reports the best epoch's: keep one "
                f"({key}.save_top_k=1)",
            )
        if checkpoint and (its_monitor, its_mode) != (monitor, mode):
            problems.add(
                f"{key}.monitor",
                f"{key} ranks epochs by {its_monitor} ({its_mode}) but monitor={monitor} "
                f"monitor_mode={mode}: the record would report one epoch and test another. Set "
                f"monitor={its_monitor} monitor_mode={its_mode} instead (the callbacks follow "
                "them)",
            )
        elif its_monitor == monitor and its_mode != mode:
            problems.add(
                f"{key}.mode",
                f"{key}.mode={its_mode} follows {monitor} the other way from monitor_mode="
                f"{mode}: it would stop the run while {monitor} improves. Drop {key}.mode "
                "(it follows monitor_mode)",
            )


# the ranking tasks whose sampled protocol may be switched off with task.eval.sampled=0
SAMPLED_OPTIONAL = ("recbench.tasks.next_item.",)


def _check_sampled(cfg: DictConfig, problems: Problems) -> None:
    """``task.eval.sampled`` negatives against ``task.ks``: with n negatives a user's list holds
    n + 1 items, so at any K > n every user is a hit and the sampled metrics say nothing."""
    task = cfg.get("task")
    try:
        ks = task.get("ks") if isinstance(task, DictConfig) else None
        n = (task.get("eval") or {}).get("sampled") if isinstance(task, DictConfig) else None
    except Exception:  # an unresolvable value: listed by the walk already
        return
    if n is None or not _is_int(n) or n < 0 or _cutoffs(ks := list(ks or [])) is not None:
        return  # absent, or refused by its own rule already
    target = str(task.get("_target_", ""))
    optional = target.startswith(SAMPLED_OPTIONAL)
    if target.startswith("recbench.tasks.topk."):
        ks.append(10)  # the top-K task computes @10 whatever task.ks lists
    if n == 0 and optional:
        return
    if n < max(ks):
        off = " or 0 to switch the sampled protocol off" if optional else ""
        problems.add(
            "task.eval.sampled",
            f"task.eval.sampled={n}: a list of the held-out item and {n} negatives ranks every "
            f"user's item within the top {max(ks)} (task.ks={_fmt(task.get('ks'))}), so the "
            f"sampled metrics would be 1 for any model: use at least {max(ks)} negatives (99 is "
            f"the NCF and SASRec protocol){off}",
        )
