"""How recbench ends a Hydra sweep whose search found nothing: an Optuna search none of whose
trials completed ends in recbench's one line (``recbench.cli``), not in Optuna's traceback. And
what a ``-m`` sweep over a config group's options needs of a key set inside that group."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class NoTrialCompleted(BaseException):
    """An Optuna search none of whose trials completed: it has no best trial to report. A
    BaseException, so that it passes Hydra's printing of the errors of a sweep."""


@contextlib.contextmanager
def searches_without_a_best_trial() -> Iterator[None]:
    """While a command runs, an Optuna search none of whose trials completed ends in
    ``NoTrialCompleted``, not in the traceback of Optuna's "No trials are completed yet" (the
    sweeper asks for the best trial once the trials have run)."""
    from hydra.core.plugins import Plugins

    # the class Hydra instantiates: its scan of the plugins loads their modules afresh
    name = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sweeper = Plugins.instance().class_name_to_class.get(name)
    if sweeper is None:  # no Optuna sweeper installed: nothing to guard
        yield
        return
    sweep = sweeper.sweep

    def guarded(self, arguments: list[str]) -> None:
        try:
            return sweep(self, arguments)
        except ValueError as exc:
            if not _no_best_trial(exc):
                raise
            raise NoTrialCompleted from exc

    sweeper.sweep = guarded
    try:
        yield
    finally:
        sweeper.sweep = sweep


def _no_best_trial(exc: ValueError) -> bool:
    """Whether ``exc`` is Optuna's refusal to name a best trial of a study with no completed
    trial: by its message, or (should Optuna reword it) by where it was raised, a study's
    ``best_*`` accessor inside Optuna."""
    if "No trials are completed" in str(exc):
        return True
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if "optuna" in code.co_filename.replace("\\", "/").split("/") and code.co_name.startswith(
            ("best_", "_get_best")
        ):
            return True
        tb = tb.tb_next
    return False


# config groups that only some configs bring in, and what brings them
GROUP_NEEDS = {"env": "task=rl (the RL model configs set it)"}


def swept_value(group: str, args: list[str]) -> str:
    """The value of a sweep over ``group``'s options on the command line (``model=dcn,dcn_v2``,
    ``model=choice(dcn,dcn_v2)``: ``dcn,dcn_v2``, ``choice(dcn,dcn_v2)``), or ""."""
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{group}=") and "," in a), "")


def swept_options(swept: str) -> list[str]:
    """The options of a sweep's value (``swept_value``)."""
    return [o.strip() for o in swept.removeprefix("choice(").removesuffix(")").split(",")]


def plain_model_keys(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` with each plain ``model.<key>=`` of a sweep over models (``-m model=dcn,dcn_v2
    model.num_cross=2``) written ``++model.<key>=``, and those keys. Hydra composes the config a
    sweep's jobs share with the default model, which may not have the key; as ``++`` it composes,
    and ``recbench.validate.EarlyChecks`` checks that every swept model has it."""
    if not swept_value("model", args):
        return args, []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out, keys = [], []
    for a in args:
        if a.startswith("model.") and "=" in a:
            try:
                shared = not parser.parse_override(a).is_sweep_override()
            except Exception:  # noqa: BLE001 - Hydra reports an override it cannot parse
                shared = False
            if shared:  # a swept value is not composed with the default model
                keys.append(a.split("=", 1)[0])
                a = f"++{a}"
        out.append(a)
    return out, keys


def missing_key(key: str, swept: str, lacking: list[str], known: list[str]) -> str:
    """What a sweep over ``group=<swept>`` says of ``key`` (``model.num_cross``), an override of
    a key that the options ``lacking`` do not have. ``known``: the keys beside it in the first
    option's config, for a misspelling."""
    group, _, name = key.partition(".")
    if lacking == swept_options(swept):  # a misspelling, most likely
        import difflib

        close = difflib.get_close_matches(name.rpartition(".")[2], known, n=3, cutoff=0.6)
        head = key.rpartition(".")[0]
        near = f"; did you mean {' or '.join(f'{head}.{c}' for c in close)}?" if close else ""
        return f"{key}: no option of the sweep's {group}={swept} has {name}{near}"
    which = ", ".join(f"{group}={o}" for o in lacking)
    return f"{key}: {which} (of the sweep's {group}={swept}) has no {name}"


def group_key_hint(
    key: str, args: list[str], groups: set[str], cfg: Any, compose: Callable[[list[str]], Any]
) -> str | None:
    """Why Hydra refused ``key``, an override inside a config group (``dataset.world.n_users``),
    when the cause is the group's option rather than a misspelling; else None. ``cfg``: the
    command's config composed with the group choices on the command line that are not swept;
    ``compose`` composes it with more. A ``-m`` sweep over a group (``optimizer=adam,sgd``)
    composes the config its jobs share with the group's default, then each job's with its
    option: all must have it (a sweep over models is checked before its jobs start)."""
    group, _, rest = key.partition(".")
    if group not in groups or not rest:
        return None
    swept = swept_value(group, args)
    name = rest.split(".")[0]
    if group not in cfg and not swept:
        needs = GROUP_NEEDS.get(group, f"the config that uses {group}")
        return (
            f"{key}: this run's config has no {group}; it comes with {needs}, which must be on "
            "the command line (a -m sweep over models composes the command line once without "
            "them)"
        )
    if not swept:
        return None
    options = swept_options(swept)
    try:
        lacking = [o for o in options if name not in (compose([f"{group}={o}"])[group] or {})]
        known = [str(k) for k in (compose([f"{group}={options[0]}"])[group] or {})]
    except Exception:  # noqa: BLE001 - the hint is a courtesy; Hydra has said what failed
        return None
    if lacking:
        return missing_key(f"{group}.{name}", swept, lacking, known)
    if name in (cfg.get(group) or {}):  # a null default (scheduler=null) has no keys
        return None
    return (
        f"{key}: every option of {group}={swept} has it, but a -m sweep first composes the "
        f"config its jobs share with the default {group}, which has no {name}. Run the options "
        "one at a time"
    )


# the sweep directory of this process's sweep and its parents, where they did not exist when the
# sweep started: Hydra makes them after ``on_multirun_start``, before the first job
_FRESH_SWEEP_DIRS: list[Path] = []


def note_sweep_dir(sweep_dir: Path) -> None:
    """Remember ``sweep_dir`` and those of its parents that do not exist yet."""
    _FRESH_SWEEP_DIRS.clear()
    folder = sweep_dir
    while not folder.exists() and folder != folder.parent:
        _FRESH_SWEEP_DIRS.append(folder)
        folder = folder.parent


def remove_empty_sweep_dir() -> None:
    """Remove the noted sweep directory, and its noted parents, where they hold nothing: what a
    sweep refused before its first job, or whose every job was refused at its start (the jobs
    remove their own folders), leaves. A folder holding anything stays."""
    for folder in _FRESH_SWEEP_DIRS:
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            break
    _FRESH_SWEEP_DIRS.clear()


__all__ = [
    "GROUP_NEEDS",
    "NoTrialCompleted",
    "group_key_hint",
    "missing_key",
    "note_sweep_dir",
    "plain_model_keys",
    "remove_empty_sweep_dir",
    "searches_without_a_best_trial",
    "swept_options",
    "swept_value",
]
