"""`recbench <command> [hydra overrides]`."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from recbench.errors import RecbenchError, recbench_cause
from recbench.sweeps import (
    NoTrialCompleted,
    plain_model_keys,
    remove_empty_sweep_dir,
    searches_without_a_best_trial,
)

console = Console(stderr=True, soft_wrap=True)


def config_dir() -> str:
    """The packaged configs: ``configs/`` beside the package (source and editable installs)."""
    env = os.environ.get("RECBENCH_CONFIG_DIR")
    if env:
        return str(Path(env).resolve())
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").exists():
            return str(candidate)
    raise SystemExit("recbench: cannot find its configs/ folder; set RECBENCH_CONFIG_DIR")


def user_config_dirs() -> list[Path]:
    """The folders of ``$RECBENCH_CONFIG_PATH`` (``:``-separated), searched beside the packaged
    configs for a user's own ``dataset/<name>.yaml`` or ``model/<name>.yaml``."""
    env = os.environ.get("RECBENCH_CONFIG_PATH", "")
    return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p]


def _explicit_search_path(args: list[str]) -> bool:
    """Whether the command line sets Hydra's config search itself (``hydra.searchpath=``,
    ``--config-dir`` / ``-cd``, ``--config-path`` / ``-cp``): it then wins, and Hydra resolves
    the group options."""
    flags = ("--config-dir", "-cd", "--config-path", "-cp")
    return any(
        a.lstrip("+").startswith("hydra.searchpath=") or a.split("=", 1)[0] in flags for a in args
    )


def user_search_path(args: list[str]) -> list[str]:
    """``args`` with ``user_config_dirs`` added to Hydra's search path, unless an explicit
    ``hydra.searchpath=`` on the command line sets it."""
    extra = user_config_dirs()
    if not extra or _explicit_search_path(args):
        return args
    paths = ",".join(f"file://{p}" for p in extra)
    return [*args, f"hydra.searchpath=[{paths}]"]  # after any flag (-m): an override


def _fail(exc: BaseException) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(exc))}")  # [a, b] in a message is no markup
    sys.exit(2)


_FAILED_JOBS: list[str] = []  # the jobs of this process's sweep that failed


def _job_name() -> str:
    """This sweep job's number and overrides, as Hydra names it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return f"#{hc.job.num} ({' '.join(hc.overrides.task)})"
    except Exception:  # noqa: BLE001
        return "a job"


def _in_multirun() -> bool:
    """Whether this run is one job of a ``-m`` sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not under Hydra
        return False


def _remove_fresh_output() -> None:
    """Remove this Hydra run's output folder when it holds only what Hydra wrote (its
    ``.hydra/`` and log): what a run refused before any work leaves."""
    try:
        from hydra.core.hydra_config import HydraConfig

        from recbench.validate import _remove_fresh

        _remove_fresh(Path(HydraConfig.get().runtime.output_dir))
    except Exception:  # noqa: BLE001 - tidying never hides the error being reported
        return


def _register_resolvers() -> None:
    """Resolvers the configs use in Hydra's own settings (a compare's folder name)."""
    from omegaconf import OmegaConf

    from recbench.compare_plan import compare_label

    if not OmegaConf.has_resolver("recbench_compare_label"):
        OmegaConf.register_new_resolver("recbench_compare_label", compare_label)


def _hydra_command(config_name: str, body: Callable) -> Callable[[list[str]], None]:
    def command(args: list[str]) -> None:
        import hydra

        _register_resolvers()

        @hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")
        def entry(cfg):
            try:
                return body(cfg)
            except Exception as exc:
                cause = recbench_cause(exc)  # itself, or a constructor's, wrapped by instantiate
                if cause is None:
                    raise
                _remove_fresh_output()  # a refused run leaves no folder of Hydra's files alone
                if _in_multirun():  # one job of a sweep: the others still run (and trials)
                    from rich.markup import escape

                    console.print(f"[bold red]error:[/] {escape(str(cause))}")
                    _FAILED_JOBS.append(_job_name())
                    return None  # no objective: a search's sweeper marks the trial failed
                _fail(cause)
            except SystemExit as exc:
                _stopped_by_sigterm(exc)
                raise

        _check_group_options(args, config_name)
        _FAILED_JOBS.clear()
        swept, model_keys = plain_model_keys(args)  # composes with the default model too
        checked = _with_checks(user_search_path(swept), config_name, model_keys)
        sys.argv = [f"recbench {config_name}", *checked]
        try:
            with searches_without_a_best_trial():
                entry()
        except NoTrialCompleted:
            from rich.markup import escape

            jobs = f": {escape(', '.join(_FAILED_JOBS))}" if _FAILED_JOBS else ""
            console.print(
                f"[bold red]every trial of the search failed[/], so it has no best trial{jobs} "
                "(their errors are above)"
            )
            sys.exit(1)
        except SystemExit as exc:
            if exc.code == 1:  # Hydra reported an error: a misspelt key gets a hint after it
                _hint_misspelt_keys(args, config_name)
            raise
        finally:
            remove_empty_sweep_dir()  # a sweep refused before any job ran, or at each job's start
        if _FAILED_JOBS:  # a sweep whose every job ran, some refused or failed
            console.print(
                f"[bold red]{len(_FAILED_JOBS)} job(s) of the sweep failed:[/] "
                + ", ".join(_FAILED_JOBS)
                + " (their errors are above)"
            )
            sys.exit(1)

    return command


def _hint_misspelt_keys(args: list[str], config_name: str) -> None:
    """After Hydra refused ``trainer.max_epoch=3`` (advising ``+trainer.max_epoch`` to add it),
    name the keys it was probably meant to be. Composes the config with the group choices only,
    so it costs nothing unless a command has already failed."""
    import difflib

    from omegaconf import DictConfig, OmegaConf
    from rich.markup import escape

    from recbench.sweeps import group_key_hint

    keys = [a.split("=", 1)[0] for a in args if "=" in a and not a.startswith(("+", "~", "-"))]
    keys = [k for k in keys if not k.startswith("hydra")]
    group_dirs = {p.name for p in Path(config_dir()).iterdir() if p.is_dir()}
    if not keys:
        return
    groups = [a for a in args if "=" in a and a.split("=", 1)[0] in group_dirs and "," not in a]
    try:
        cfg = _compose_quiet(config_name, groups)
    except Exception:  # noqa: BLE001 - the hint is a courtesy; Hydra has said what failed
        return

    def more(extra: list[str]):
        return _compose_quiet(config_name, [*groups, *extra])

    for key in keys:
        node, parts = cfg, key.split(".")
        hint = group_key_hint(key, args, group_dirs, cfg, more)  # a group's option, not a typo
        if hint:
            console.print(f"[yellow]hint:[/] {escape(hint)}")
            continue
        for depth, part in enumerate(parts):
            if not isinstance(node, DictConfig):
                break
            if part not in node.keys():  # `in node` is False for a mandatory (???) value too
                close = difflib.get_close_matches(part, [str(k) for k in node], n=3, cutoff=0.6)
                if close:
                    head = ".".join(parts[:depth])
                    names = " or ".join(f"{head}.{c}" if head else c for c in close)
                    console.print(f"[yellow]hint:[/] {key} is not a key; did you mean {names}?")
                break
            if OmegaConf.is_missing(node, part):  # a mandatory value: a key, with nothing below
                break
            try:
                node = node[part]
            except Exception:  # noqa: BLE001 - an interpolation the hint cannot resolve here
                break


def _compose_quiet(config_name: str, overrides: list[str]):
    """The composed config; Hydra's and OmegaConf's errors are the caller's."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=user_search_path(overrides))


def _check_group_options(args: list[str], command: str) -> None:
    """Refuse a config group option that does not exist (``model=deepfn``) in one line with the
    nearest names, before Hydra's many-line report. With an explicit ``hydra.searchpath=`` the
    folders are Hydra's to resolve, and it reports."""
    if _explicit_search_path(args):
        return
    from recbench.validate.groups import unknown_options
    from recbench.validate.problems import Problems

    problems = Problems()
    dirs = [Path(config_dir()), *user_config_dirs()]
    for i, message in enumerate(unknown_options(args, dirs)):
        problems.add(str(i), message)
    if problems:
        _fail(problems.error(command))


def _stopped_by_sigterm(exc: SystemExit) -> None:
    """Lightning ends a run that received SIGTERM (a scheduler's preemption, a compare stopping
    it) with ``SIGTERMException``, a ``SystemExit`` of status 0: exit 143 instead, so that the
    caller does not take the unfinished run for a finished one."""
    lightning = sys.modules.get("pytorch_lightning.utilities.exceptions")
    if lightning is None or not isinstance(exc, lightning.SIGTERMException):
        return
    console.print("[bold red]stopped:[/] SIGTERM arrived before the run finished; nothing recorded")
    sys.exit(128 + 15)


def _interrupted_after_record() -> None:
    """Ctrl-C after the run saved its record (in its last steps, or Hydra's after them): say
    that the run counts and where it is, and exit 130. Before that, the interrupt is left to
    end the process as it always does."""
    train = sys.modules.get("recbench.train")
    saved = train.saved_record() if train is not None else None
    if saved is None:
        return
    from rich.markup import escape

    run_dir, in_store = saved
    if in_store:
        where = "is finished and in the results store (recbench compare reuses it)"
    else:
        where = (
            "is finished; record=false kept it out of the results store "
            f"(`recbench results add {run_dir / 'metrics.json'}` adds it)"
        )
    sweep = "; the sweep stopped there" if _in_multirun() else ""
    console.print(
        f"[yellow]interrupted[/] after the run stored its results: the run in "
        f"{escape(str(run_dir))} {escape(where)}{sweep}"
    )
    sys.exit(130)


def _with_checks(args: list[str], command: str, model_keys: Sequence[str] = ()) -> list[str]:
    """``args`` plus the overrides that run recbench's config checks before Hydra makes the run
    directory, placed beside the user's overrides (Hydra takes them as one block).
    ``model_keys``: the keys ``plain_model_keys`` wrote ``++``."""
    from recbench.validate import hydra_overrides

    ours = hydra_overrides(command, model_keys)
    at = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), None)
    return [*ours, *args] if at is None else [*args[:at], *ours, *args[at:]]


def _train(cfg):
    from recbench.train import run

    return run(cfg)


def _compare(cfg):
    from recbench.compare import run as compare_run

    return compare_run(cfg)


def _bench(cfg):
    from recbench.bench import run as bench_run

    return bench_run(cfg)


def _compose(config_name: str, overrides: list[str]):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = _compose_quiet(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        if config_name == "data":  # a key of a group only train composes: say where it goes
            groups = {p.name for p in Path(config_dir()).iterdir() if p.is_dir()} - {"dataset"}
            top = [a.lstrip("+~").split("=", 1)[0].split(".", 1)[0] for a in overrides]
            foreign = [a for a, t in zip(overrides, top, strict=True) if t in groups]
            if foreign:
                keys = ", ".join(a.split("=", 1)[0] for a in foreign)
                console.print(
                    f"[yellow]hint:[/] {escape(keys)}: recbench data takes dataset=<name>, "
                    "dataset.<key>=<value> and force=; training settings go to recbench train"
                )
            overrides = [a for a in overrides if a not in foreign]
        _hint_misspelt_keys(overrides, config_name)  # the key a misspelt one was meant to be
        sys.exit(2)
    from recbench.validate.added import misspelt_additions
    from recbench.validate.problems import Problems

    problems = Problems()
    for key, message in misspelt_additions(cfg, overrides).items():
        problems.add(key, message)
    if problems:
        _fail(problems.error(config_name))
    return cfg


def _keys_of_no_model(overrides: list[str]) -> list[str]:
    """For each ``model.<key>=`` that no model config has at its top level: what it says, with
    the nearest keys that some model config has."""
    import difflib

    from omegaconf import OmegaConf

    known: set[str] = set()
    for path in [Path(config_dir()) / "model", *(d / "model" for d in user_config_dirs())]:
        for f in path.glob("*.yaml"):
            try:
                node = OmegaConf.load(f) or {}
            except Exception:  # noqa: BLE001 - a file Hydra will report on its own
                continue
            if "model" in node and "_target_" not in node:  # @package _global_ (the RL agents)
                node = node["model"] or {}
            known |= {str(k) for k in node}
    out = []
    for a in overrides:
        key = a.split("=", 1)[0].split(".")[1]
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            near = f" (did you mean {' or '.join(f'model.{c}' for c in close)}?)" if close else ""
            out.append(f"model.{key} is a key of no model config{near}")
    return out


def _check_compare_model_keys(args: list[str]) -> None:
    """A compare composes the train config with its default model, so ``model.<key>=`` for a key
    only the compared models have fails in Hydra with advice (``+model.<key>``) that would not
    reach the runs. Say what does: ``extra`` passes overrides to every run as they are."""
    keys = [a for a in args if a.startswith("model.") and "=" in a]
    if not keys:
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            compose(config_name="compare", overrides=user_search_path(args))
    except (HydraException, OmegaConfBaseException) as exc:
        bad = [a for a in keys if f"'{a.split('=', 1)[0]}'" in str(exc)]
        unknown = _keys_of_no_model(bad)
        if unknown:
            _fail(RecbenchError("; ".join(unknown)))
        if bad:
            given = ",".join(f"'{a}'" for a in bad)
            _fail(
                RecbenchError(
                    f"{', '.join(a.split('=', 1)[0] for a in bad)} is not a key of the "
                    "compare's default model config. Keys of the compared models' configs go "
                    f'to every run through extra: recbench compare ... "extra=[{given}]"'
                )
            )
        # any other composition error: Hydra reports it as usual


DATA_USAGE = (
    "usage: recbench data prepare|info [dataset=<name>] [overrides] [--cfg job] [--config-dir "
    "DIR]: build (prepare; force=true rebuilds) or describe (info) a dataset's cached tensors "
    "and splits as train's default task (ctr) prepares them; the top-K, rating and next-item "
    "tasks prepare their own at the start of `recbench train task=<task>` and print their sizes"
)


def _data(args: list[str]) -> None:
    if not args or args[0] not in ("prepare", "info"):
        _fail(RecbenchError(DATA_USAGE))
    from omegaconf import OmegaConf

    from recbench.data.pipeline import prepare
    from recbench.validate import check

    rest, show_cfg = list(args[1:]), False
    cfg_flags = [i for i, a in enumerate(rest) if a in ("--cfg", "-c") or a.startswith("--cfg=")]
    for i in reversed(cfg_flags):  # Hydra's --cfg job (or =job, -c): the config, nothing prepared
        show_cfg = True
        del rest[i : i + (1 if "=" in rest[i] else 2)]
    for flag in ("--config-dir", "-cd"):  # Hydra's flag: a folder searched beside the packaged
        while flag in rest or any(a.startswith(f"{flag}=") for a in rest):
            i = next(j for j, a in enumerate(rest) if a == flag or a.startswith(f"{flag}="))
            folder = rest[i].split("=", 1)[1] if "=" in rest[i] else rest[i + 1]
            del rest[i : i + (1 if "=" in rest[i] else 2)]
            extra = os.environ.get("RECBENCH_CONFIG_PATH")
            dirs = [folder, *([extra] if extra else [])]
            os.environ["RECBENCH_CONFIG_PATH"] = os.pathsep.join(dirs)
    if any(a.lstrip("+").startswith("task=") for a in rest):
        _fail(RecbenchError(f"recbench data takes no task=. {DATA_USAGE}"))
    _check_group_options(rest, "data")
    cfg = _compose("data", rest)
    if show_cfg:
        print(OmegaConf.to_yaml(cfg, resolve=False), end="")
        return
    check(cfg, "data")  # a value left ??? or out of range: one line each, before any data is read
    data = prepare(
        cfg.dataset, force=bool(cfg.force) and args[0] == "prepare", log=lambda m: console.print(m)
    )
    from recbench.data.describe import print_data_info

    print_data_info(data)


def _models(args: list[str]) -> None:
    from rich.table import Table

    from recbench.lineage import NODES

    have = {p.stem for p in (Path(config_dir()) / "model").glob("*.yaml")}
    verbose = bool({"-v", "--verbose"} & set(args))
    tasks = list(dict.fromkeys(n.task for n in NODES))
    task = None
    for a in args:
        if a.startswith("task=") and a.removeprefix("task=") in tasks:
            task = a.removeprefix("task=")
        elif a.startswith("task="):
            import difflib

            close = difflib.get_close_matches(a.removeprefix("task="), tasks, n=1, cutoff=0.5)
            near = f" (did you mean task={close[0]}?)" if close else ""
            _fail(
                RecbenchError(
                    f"recbench models: there is no {a}{near}; the tasks are {', '.join(tasks)}"
                )
            )
        elif a not in ("-v", "--verbose"):
            _fail(
                RecbenchError(
                    f"recbench models: unknown argument {a!r}. usage: recbench models "
                    f"[task=<{'|'.join(tasks)}>] [--verbose]"
                )
            )
    title = "the recbench lineage (recbench train model=<model>)"
    if task:
        title = f"the models of task={task} (recbench train task={task} model=<model>)"
    t = Table(title=title)
    for c in ("model", "name", "tasks", "parents", "paper", *(("idea",) if verbose else ())):
        t.add_column(c, no_wrap=c not in ("idea", "paper"))
    from recbench.report.lineage import title_of, variant_base

    variants: dict[str, list[str]] = {}  # configs <node>_<variant> (din_dice), under their node
    for m in sorted(have):
        base = None if m in {n.model for n in NODES} else variant_base(m)
        if base:
            variants.setdefault(base, []).append(m)
    for n in NODES:
        if task and task not in n.tasks:
            continue
        mark = n.model if n.model in have else f"[dim]{n.model} (planned)[/]"
        row = [mark, n.title, ", ".join(n.tasks), ", ".join(n.parents) or "-", n.paper]
        t.add_row(*row, *((n.idea,) if verbose else ()))
        for v in variants.get(n.model, []):
            row = [v, title_of(v), ", ".join(n.tasks), n.model, f"a variant of {n.model}"]
            t.add_row(*row, *(("",) if verbose else ()))
    Console(width=max(Console().width, 120)).print(t)
    if not verbose:
        Console().print("recbench models --verbose adds the idea each model adds to its parents")


def _results(args: list[str]) -> None:
    from recbench.store_check import main as results_main

    results_main(args)


def _completion(args: list[str]) -> None:
    from recbench.completion import HYDRA_CONFIGS, SHELLS, hydra_query, script
    from recbench.lineage import NODES

    if len(args) == 2 and args[0] == "query" and args[1] in HYDRA_CONFIGS:
        # Hydra's completion of that config; the shell script passes the line in COMP_LINE
        query = _hydra_command(HYDRA_CONFIGS[args[1]], lambda cfg: None)
        hydra_query(HYDRA_CONFIGS[args[1]], lambda: query(["-sc", "query=bash"]))
        return
    if len(args) != 1 or args[0] not in SHELLS:
        _fail(
            RecbenchError(
                f"usage: recbench completion <{'|'.join(SHELLS)}>, e.g. in ~/.bashrc: "
                'eval "$(recbench completion bash)"'
            )
        )
    tasks = list(dict.fromkeys(n.task for n in NODES))
    print(script(args[0], list(COMMANDS), tasks), end="")


COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "train": (_hydra_command("train", _train), "train and evaluate one model (or a -m sweep)"),
    "compare": (
        _hydra_command("compare", _compare),
        "train a lineage path over seeds and report deltas",
    ),
    "bench": (_hydra_command("bench", _bench), "measure training throughput and memory"),
    "data": (_data, "prepare | info: build or describe a dataset's cached tensors"),
    "models": (_models, "list the lineage: models, parents, papers"),
    "results": (_results, "check [--repair] | add <metrics.json>: look after the results store"),
    "completion": (_completion, 'bash | zsh: tab completion, eval "$(recbench completion bash)"'),
}


def _models_usage() -> str:
    from recbench.lineage import NODES

    tasks = "|".join(dict.fromkeys(n.task for n in NODES))
    return (
        f"usage: recbench models [task=<{tasks}>] [--verbose]: the lineage's models, the tasks "
        "each serves, its parents and paper; --verbose adds the idea each adds to its parents"
    )


def _results_usage() -> str:
    from recbench.store_check import USAGE

    return USAGE


def _completion_usage() -> str:
    from recbench.completion import SHELLS

    return (
        f"usage: recbench completion <{'|'.join(SHELLS)}>: the shell's tab completion of commands "
        'and overrides, e.g. in ~/.bashrc: eval "$(recbench completion bash)"'
    )


HELP: dict[str, Callable[[], str]] = {
    "data": lambda: DATA_USAGE,
    "models": _models_usage,
    "results": _results_usage,
    "completion": _completion_usage,
}


def usage() -> str:
    lines = ["usage: recbench <command> [hydra overrides]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "recbench --version prints the version; every command takes --help. train, compare,",
        "bench and data take Hydra overrides and --cfg job, e.g.",
        "  recbench train model=din dataset=movielens-100k trainer.max_epochs=5",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if args[0] in ("-V", "--version"):
        from recbench import __version__

        print(f"recbench {__version__}")
        return
    cmd, rest = args[0], args[1:]
    if cmd in HELP and {"-h", "--help"} & set(rest):  # the commands Hydra does not parse
        print(HELP[cmd]())
        return
    if cmd == "compare":  # a flag for the common case of rebuilding a report from the store
        from recbench.compare import normalise_args  # --report-only, unquoted extra=[...]

        rest = normalise_args(rest)
        _check_compare_model_keys(rest)
    if cmd not in COMMANDS:
        console.print(
            f"[bold red]error:[/] unknown command {cmd!r}; known commands: {', '.join(COMMANDS)}"
        )
        sys.exit(2)
    try:
        COMMANDS[cmd][0](rest)
    except RecbenchError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _interrupted_after_record()
        raise
    except Exception as exc:
        cause = recbench_cause(exc)  # a constructor's refusal, wrapped by Hydra's instantiate
        if cause is None:
            raise
        _fail(cause)
    if argv is None:
        # the program ends here and everything it wrote is closed: spare the interpreter's
        # final collections over every object torch and Lightning made (1-2 CPU s a run)
        gc.freeze()


if __name__ == "__main__":
    main()
