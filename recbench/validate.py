"""Checks of a run's configuration that need no data, made before any work.

``check`` walks the composed config once and collects every problem it finds (types and ranges
of well-known keys wherever they appear, keys a ``_target_`` does not take, devices, precision,
the run directory, the results store and the cache), then raises one ``ConfigError`` that lists
them all. ``EarlyChecks`` runs the same checks from Hydra's ``on_run_start``, before Hydra creates
the run directory, so a refused command leaves nothing behind.

A run directory that holds an earlier run is handled here too: the leftovers of a run that did
not finish (checkpoint, TensorBoard events, predictions) move into ``<run_dir>/stale-<time>/``; a
finished run (``metrics.json``) is kept unless ``overwrite=true`` asks to move it aside as well.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import datetime as dt
import difflib
import functools
import importlib
import importlib.util
import inspect
import math
import os
import shlex
import shutil
import sys
import tempfile
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from recbench.errors import ConfigError

try:  # Hydra's callback base; recbench only runs under Hydra 1.3, which has it
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]

# Free space the data cache needs for a dataset's tensors (MovieLens-1M is ~150 MB).
MIN_FREE_CACHE_MB = 300
MIN_FREE_OUTPUTS_MB = 50

# A run directory may not be one of these, nor lie inside the second group.
NOT_A_RUN_DIR = ("/", "/home", "/var", "/tmp", "/opt", "/srv", "/mnt", "/media", "/root", "/usr")
SYSTEM_DIRS = (
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/include",
    "/usr/share",
    "/usr/libexec",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/spool",
    "/var/mail",
)

# What an earlier run leaves in its run directory. ``.hydra/`` and Hydra's job log are the
# current run's by the time ``run()`` starts, so only the early (pre-Hydra) check moves them.
RUN_ARTEFACTS = ("checkpoints", "tensorboard", "predictions.npz", "metrics.json", "ddp_config.yaml")
HYDRA_ARTEFACTS = (".hydra",)

LIGHTNING_PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
SKIP_NODES = {"hydra", "paths"}  # Hydra's own node; paths are checked as folders below


class Problems:
    """Problems found so far, at most one per config key, in the order found."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, key: str, message: str) -> None:
        self.items.setdefault(key, message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self, command: str) -> ConfigError:
        n = len(self.items)
        head = (
            f"recbench {command}: the configuration has {n} problem{'s' if n > 1 else ''}; "
            "nothing was run:"
        )
        return ConfigError("\n".join([head, *(f"  - {m}" for m in self.items.values())]))


# ------------------------------------------------------------------ values by key name


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


def _max_epochs(v: Any) -> str | None:
    # -1: until a stopping callback says so; 0 is refused by _check_fit unless fit=false
    if v is None or (_is_int(v) and v >= -1):
        return None
    return "must be an integer >= 1 (or -1: until early stopping stops it)"


# Rules by the key's own name, wherever it appears (model, optimizer, trainer, callbacks, task,
# dataset ...). Suffix rules follow.
NAME_RULES: dict[str, Callable[[Any], str | None]] = {
    "batch_size": _int_at_least(1, none_ok=False),
    "eval_batch_size": _int_at_least(1, none_ok=False),
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
    "jobs": _int_at_least(1),
    "seeds": lambda v: (
        None
        if (_is_int(v) and v >= 1) or (isinstance(v, list) and v and all(_is_int(s) for s in v))
        else "must be a number of seeds >= 1 or a list of integer seeds"
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
    "limit_train_batches": _limit_batches,
    "limit_val_batches": _limit_batches,
    "limit_test_batches": _limit_batches,
    "monitor_mode": lambda v: None if v in ("min", "max") else "must be min or max",
    "device_resident": lambda v: (
        None if v in ("auto", True, False) else "must be auto, true or false"
    ),
}
SUFFIX_RULES: tuple[tuple[str, Callable[[Any], str | None]], ...] = (
    ("_batch_size", _int_at_least(1)),
    ("_dim", _int_at_least(1)),
    ("_hidden", _positive_int_list),
    ("_dropout", _number(0.0, 1.0, hi_open=True)),
    ("_lr", _number(0.0, lo_open=True)),
    ("_reg", _number(0.0)),
    ("_seed", _seed),
    ("_temperature", _number(0.0, lo_open=True)),
)
EXAMPLES = {"lr": "1e-3", "dropout": "0.1", "weight_decay": "0.0", "patience": "2"}


def _rule_for(name: str) -> Callable[[Any], str | None] | None:
    if name in NAME_RULES:
        return NAME_RULES[name]
    return next((rule for suffix, rule in SUFFIX_RULES if name.endswith(suffix)), None)


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


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
        rule = _rule_for(name)
        if rule is None:
            return
        why = rule(value)
        if why:
            eg = EXAMPLES.get(name)
            hint = f", e.g. {key}={eg}" if eg else ""
            problems.add(key, f"{key}={_fmt(value)}: {why}{hint}")

    _walk(cfg, "", problems, visit)


# ------------------------------------------------------------------ _target_ signatures


def _import(target: str) -> Any:
    module, _, name = target.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _signature(obj: Any) -> inspect.Signature | None:
    for kwargs in ({"eval_str": True}, {}):
        try:
            return inspect.signature(obj, **kwargs)
        except (TypeError, ValueError, NameError, AttributeError):
            continue
    return None


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _scalar_types(annotation: Any) -> set[type] | None:
    """The plain types an annotation allows (int, float, bool, str, None), or None when it allows
    anything else too (then nothing is checked)."""
    if annotation in _SCALARS:
        return {annotation}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: set[type] = set()
        for arg in typing.get_args(annotation):
            if arg is type(None):
                out.add(type(None))
            elif arg in _SCALARS:
                out.add(arg)
            else:
                return None
        return out
    return None


def _type_problem(value: Any, allowed: set[type]) -> str | None:
    if value is None:
        return None if type(None) in allowed else "must be set (not null)"
    if isinstance(value, bool):
        return None  # Python takes a bool where a number goes; a typo never parses as one
    if _is_int(value) and (int in allowed or float in allowed):
        return None
    if isinstance(value, float) and float in allowed:
        return None
    if isinstance(value, str) and str in allowed:
        return None
    if isinstance(value, int | float | str):
        want = [_SCALARS[t] for t in (int, float, bool, str) if t in allowed]
        want = ["a number"] if "a number" in want else want
        return "must be " + " or ".join(want) if want else None
    return None


_NO_PARAMS = ("self", "schema")  # schema: given by build_model, never by the config


def _source_file(module: str) -> Path | None:
    """The source file of ``module``, found without importing it or its parent packages."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level lookup runs no package code
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin else None
    if not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest[:-1])
    for candidate in (base / rest[-1] / "__init__.py", base / f"{rest[-1]}.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=256)
def _static_parameters(
    module: str, name: str, depth: int = 0
) -> tuple[dict[str, str | None], bool] | None:
    """``name``'s parameters in ``module`` (annotation source by name, and whether it takes
    ``**kwargs``) read from the source, following re-exports; None when the source does not say
    (an inherited ``__init__``, a dynamic export)."""
    path = _source_file(module)
    if path is None or depth > 5:
        return None
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        fn = None
        if isinstance(node, ast.ClassDef) and node.name == name:
            fn = next(
                (b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"),
                None,
            )
            if fn is None:  # inherited: the first base that defines it
                for base in node.bases:
                    found = _static_base(tree, module, base, depth)
                    if found is not None:
                        return found
                return None
        elif isinstance(node, ast.FunctionDef) and node.name == name:
            fn = node
        if fn is not None:
            a = fn.args
            params = {
                arg.arg: ast.unparse(arg.annotation) if arg.annotation else None
                for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs)
                if arg.arg != "self"
            }
            return params, a.kwarg is not None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    if node.level:
                        package = (
                            module if path.name == "__init__.py" else module.rpartition(".")[0]
                        )
                        for _ in range(node.level - 1):
                            package = package.rpartition(".")[0]
                        source = f"{package}.{node.module}" if node.module else package
                    else:
                        source = node.module or ""
                    return _static_parameters(source, alias.name, depth + 1)
    return None


def _static_base(
    tree: ast.Module, module: str, base: ast.expr, depth: int
) -> tuple[dict[str, str | None], bool] | None:
    """``_static_parameters`` of a base class written ``Name`` or ``alias.Name``."""
    if isinstance(base, ast.Name):
        return _static_parameters(module, base.id, depth + 1)
    if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name) == base.value.id:
                        return _static_parameters(alias.name, base.attr, depth + 1)
    return None


_SCALAR_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}


@functools.lru_cache(maxsize=1024)
def _types_of_source(annotation: str | None) -> set[type] | None:
    """``_scalar_types`` of an annotation's source text ("Optional[int]", "int | None")."""
    if not annotation:
        return None
    try:
        tree = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return None

    def walk(n: ast.expr) -> set[type] | None:
        if isinstance(n, ast.Name) and n.id in _SCALAR_NAMES:
            return {_SCALAR_NAMES[n.id]}
        if isinstance(n, ast.Constant) and n.value is None:
            return {type(None)}
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
            left, right = walk(n.left), walk(n.right)
            return None if left is None or right is None else left | right
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name):
            args = n.slice.elts if isinstance(n.slice, ast.Tuple) else [n.slice]
            if n.value.id in ("Optional", "Union"):
                out: set[type] = {type(None)} if n.value.id == "Optional" else set()
                for arg in args:
                    t = walk(arg)
                    if t is None:
                        return None
                    out |= t
                return out
        return None

    return walk(tree)


def _parameters(target: str) -> tuple[dict[str, set[type] | None], bool] | None:
    """The parameters ``target`` takes (allowed scalar types by name; None: not checked) and
    whether it takes ``**kwargs``. A class not imported yet is read from its source, so that a
    refused command does not wait seconds for Lightning to import. Raises when the target cannot
    be imported."""
    module, _, name = target.rpartition(".")
    if module not in sys.modules:
        static = _static_parameters(module, name)
        if static is not None:
            params, kwargs = static
            return {k: _types_of_source(v) for k, v in params.items()}, kwargs
    sig = _signature(_import(target))
    if sig is None:
        return None
    kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return {
        n: None if p.annotation is inspect.Parameter.empty else _scalar_types(p.annotation)
        for n, p in sig.parameters.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }, kwargs


def _check_targets(cfg: DictConfig, problems: Problems, skip: set[str]) -> None:
    """Every node with a ``_target_``: the target imports, and each key is a parameter of it
    (no ``**kwargs`` swallowing a misspelled key), of the type its annotation names."""

    def nodes(node: DictConfig, path: str):
        if "_target_" in node:
            yield path, node
        for k in node:
            if path == "" and k in SKIP_NODES:
                continue
            try:
                v = node[k]
            except Exception:
                continue  # reported by the value walk
            if isinstance(v, DictConfig):
                yield from nodes(v, f"{path}.{k}" if path else str(k))

    for path, node in nodes(cfg, ""):
        if path in skip:
            continue
        target = str(node.get("_target_"))
        try:
            found = _parameters(target)
        except Exception as exc:
            problems.add(
                f"{path}._target_",
                f"{path}._target_={target!r} cannot be imported ({exc}): "
                f"check the spelling in the {path} config",
            )
            continue
        if found is None or found[1]:
            continue  # unknown, or **kwargs takes anything
        params = found[0]
        valid = [n for n in params if n not in _NO_PARAMS]
        for k in [k for k in node if k not in HYDRA_KEYS]:
            key = f"{path}.{k}"
            if k not in params:
                close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
                mean = f"; did you mean '{close[0]}'?" if close else "."
                problems.add(
                    key,
                    f"{path} has no parameter '{k}'{mean} {target} takes: "
                    f"{', '.join(valid) or 'no parameters'}. Remove or rename {key}",
                )
                continue
            allowed = params[k]
            try:
                value = node[k]
            except Exception:
                continue
            if allowed is None or isinstance(value, DictConfig | ListConfig):
                continue
            why = _type_problem(value, allowed)
            if why:
                problems.add(key, f"{key}={_fmt(value)}: {why}")


# ------------------------------------------------------------------ trainer: devices, precision


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _device_count(devices: Any) -> tuple[int | None, str | None]:
    """The number of devices a Lightning ``devices`` value asks for (None: all there are)."""
    if devices in ("auto", -1, "-1"):
        return None, None
    if isinstance(devices, str):
        s = devices.strip()
        if s.lstrip("-").isdigit():
            devices = int(s)
        else:
            try:
                devices = [int(x) for x in s.split(",") if x.strip()]
            except ValueError:
                return None, "must be a number of devices, a list of device indices, or auto"
    if _is_int(devices):
        return (devices, None) if devices >= 1 else (None, "must be >= 1, -1 or auto")
    if isinstance(devices, list) and devices and all(_is_int(d) and d >= 0 for d in devices):
        return len(devices), None
    return None, "must be a number of devices, a list of device indices, or auto"


def _ddp_command(command: str, n: int, accelerator: str) -> str:
    """The user's command line, changed to run ``n`` devices under the DDP strategy."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        overrides = [str(o) for o in hc.overrides.task]
        trainer_choice = hc.runtime.choices.get("trainer")
    except Exception:
        overrides, trainer_choice = [], "cpu"

    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")

    drop = {"trainer", "trainer.devices", "trainer.strategy"}
    kept = [o for o in overrides if key(o) not in drop]
    if trainer_choice in ("cpu", "ddp", None):
        extra = ["trainer=ddp"]
        if accelerator != "auto" and key("trainer.accelerator") not in map(key, kept):
            extra.append(f"trainer.accelerator={accelerator}")
    else:
        kept = [o for o in overrides if key(o) not in drop - {"trainer"}]
        extra = ["trainer.strategy=ddp"]
    return shlex.join(["recbench", command, *kept, *extra, f"trainer.devices={n}"])


def _check_trainer(cfg: DictConfig, problems: Problems, command: str) -> None:
    t = cfg.get("trainer")
    if not isinstance(t, DictConfig):
        return
    try:
        accelerator = str(t.get("accelerator", "auto"))
        devices = t.get("devices", 1)
        strategy = str(t.get("strategy", "auto"))
        precision = t.get("precision", "32-true")
    except Exception:
        return  # reported by the value walk
    if accelerator not in ACCELERATORS:
        problems.add(
            "trainer.accelerator",
            f"trainer.accelerator={accelerator!r} is not one of {', '.join(ACCELERATORS)}",
        )
        return
    if accelerator == "cpu" and "torch" not in sys.modules:
        torch = None  # a CPU run asks nothing of torch here; importing it takes seconds
        cuda = False
    else:
        import torch

        cuda = torch.cuda.is_available()
    if accelerator == "auto":
        accelerator_kind = "gpu" if cuda else "cpu"
    else:
        accelerator_kind = "gpu" if accelerator in ("gpu", "cuda") else accelerator
    if accelerator_kind == "gpu" and not cuda:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        problems.add(
            "trainer.accelerator",
            f"trainer.accelerator={accelerator} but torch sees no GPU (torch {torch.__version__}, "
            f"{build}): use trainer=cpu here, or run on a machine with a GPU and a CUDA build "
            "of torch",
        )
    if accelerator_kind == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        problems.add(
            "trainer.accelerator",
            "trainer.accelerator=mps but MPS is not available: use trainer=cpu",
        )

    n, why = _device_count(devices)
    if n is None and not why and accelerator_kind == "gpu" and cuda:
        n = torch.cuda.device_count()  # devices=auto or -1: every GPU
    if why:
        problems.add("trainer.devices", f"trainer.devices={_fmt(devices)}: {why}")
    elif n is not None:
        have, what, how = None, "", ""
        if accelerator_kind == "cpu":
            have, what, how = usable_cpus(), "CPU core", "this process may use"
        elif accelerator_kind == "gpu" and cuda:
            have, what, how = torch.cuda.device_count(), "GPU", "torch sees"
        indices = devices if isinstance(devices, list) else []
        if have is not None and (n > have or any(i >= have for i in indices)):
            source = "os.sched_getaffinity" if what == "CPU core" else "torch.cuda.device_count()"
            problems.add(
                "trainer.devices",
                f"trainer.devices={_fmt(devices)}{' on CPU' if what == 'CPU core' else ''}, but "
                f"{how} {have} {what}{'s' if have != 1 else ''} ({source}): "
                f"use trainer.devices={have} or fewer",
            )
            n = min(n, have)
        if n > 1 and command != "bench" and not _launched_rank():
            if "ddp" not in strategy:
                problems.add(
                    "trainer.strategy",
                    f"trainer.devices={_fmt(devices)} with trainer.strategy={strategy}: several "
                    "devices need the DDP strategy, whose ranks recbench starts itself. "
                    "Run instead:\n      " + _ddp_command(command, n, accelerator),
                )
            elif any(w in strategy for w in ("spawn", "fork", "notebook")):
                problems.add(
                    "trainer.strategy",
                    f"trainer.strategy={strategy}: recbench starts the DDP ranks itself; use "
                    "trainer.strategy=ddp (or trainer=ddp)",
                )

    nodes = t.get("num_nodes", 1)
    started = "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if _is_int(nodes) and nodes > 1 and not started and command != "bench":
        problems.add(
            "trainer.num_nodes",
            f"trainer.num_nodes={nodes}: recbench starts the ranks of one node only; start "
            "recbench with torchrun or srun on every node instead",
        )

    p = str(precision)
    if p not in LIGHTNING_PRECISIONS:
        problems.add(
            "trainer.precision",
            f"trainer.precision={_fmt(precision)} is not a Lightning precision: use one of "
            "32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true",
        )
    elif accelerator_kind == "gpu" and cuda and "bf16" in p and not torch.cuda.is_bf16_supported():
        problems.add(
            "trainer.precision",
            f"trainer.precision={p}: this GPU has no bfloat16; use trainer.precision=16-mixed",
        )


def _check_fit(cfg: DictConfig, problems: Problems) -> None:
    """A fit that trains nothing would be recorded as a trained model."""
    t = cfg.get("trainer")
    if isinstance(t, DictConfig) and cfg.get("fit", True):
        nothing = [
            f"trainer.{k}=0"
            for k in ("max_epochs", "max_steps", "limit_train_batches")
            if _is_int(t.get(k)) and t.get(k) == 0
        ]
        if nothing:
            problems.add(
                "fit",
                f"{nothing[0]} trains nothing, yet the run would be recorded as a trained model: "
                "train at least one epoch (e.g. trainer.max_epochs=1), or evaluate a checkpoint "
                "without training with fit=false ckpt_path=<run_dir>/checkpoints/<best>.ckpt",
            )
    ckpt = cfg.get("ckpt_path")
    if isinstance(ckpt, str) and ckpt not in ("last", "best", "hpc", "registry"):
        if not Path(ckpt).expanduser().is_file():
            problems.add("ckpt_path", f"ckpt_path={ckpt}: no such checkpoint file")


# ------------------------------------------------------------------ folders


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(path: Path) -> str | None:
    """Why ``path`` (a folder, made if missing) cannot be written, or None."""
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    base = _existing_ancestor(path)
    if not base.is_dir():
        return f"{base} is a file, so {path} cannot be made"
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        return f"{base} is not writable ({exc.strerror or exc})"
    return None


def _free_mb(path: Path) -> float:
    return shutil.disk_usage(_existing_ancestor(path)).free / 2**20


def system_folder(path: Path) -> str | None:
    """The system folder ``path`` is or lies in, or None."""
    p = Path(os.path.abspath(path.expanduser()))
    candidates = {p, p.resolve()}
    for q in candidates:
        if str(q) in NOT_A_RUN_DIR or q == Path.home():
            return str(q)
        for s in SYSTEM_DIRS:
            if q == Path(s) or Path(s) in q.parents:
                return s
    return None


def _check_run_dir(
    run_dir: Path, problems: Problems, what: str = "run directory", flag: str = "hydra.run.dir"
) -> None:
    sysdir = system_folder(run_dir)
    if sysdir:
        problems.add(
            "run_dir",
            f"the {what} {run_dir} is {'in ' if str(run_dir) != sysdir else ''}the system "
            f"folder {sysdir}: give the run a folder of its own, e.g. {flag}=outputs/my-run "
            "(or set RECBENCH_OUTPUTS)",
        )
        return
    why = _writable(run_dir)
    if why:
        problems.add(
            "run_dir",
            f"the {what} {run_dir} cannot be written: {why}. Choose another with "
            f"{flag}=<folder> or RECBENCH_OUTPUTS=<folder>",
        )
    elif _free_mb(run_dir) < MIN_FREE_OUTPUTS_MB:
        problems.add(
            "run_dir",
            f"the {what} {run_dir} has {_free_mb(run_dir):.0f} MB free; a run needs "
            f"{MIN_FREE_OUTPUTS_MB} MB for its checkpoint and events: free space or choose "
            "another folder",
        )


def _check_folders(cfg: DictConfig, problems: Problems, run_dir: Path | None, command: str) -> None:
    if run_dir is not None:
        _check_run_dir(run_dir, problems)
    paths = cfg.get("paths")
    if isinstance(paths, DictConfig) and "results" in paths and command != "bench":
        try:
            results = Path(str(paths.results))
        except Exception as exc:
            problems.add("paths.results", f"paths.results cannot be resolved: {exc}")
        else:
            why = _writable(results)
            if why:
                problems.add(
                    "paths.results",
                    f"the results store folder {results} cannot be written: {why}. The run's "
                    "record would be lost after training: set RECBENCH_OUTPUTS=<folder> or "
                    "paths.results=<folder>",
                )
    if "dataset" in cfg:
        from recbench.data.adapters.base import cache_root

        cache = cache_root()
        why = _writable(cache)
        if why:
            problems.add(
                "cache",
                f"the data cache {cache} cannot be written: {why}. Set RECBENCH_CACHE_DIR to a "
                "writable folder",
            )
        elif _free_mb(cache) < MIN_FREE_CACHE_MB:
            problems.add(
                "cache",
                f"the data cache {cache} has {_free_mb(cache):.0f} MB free; preparing a dataset "
                f"needs about {MIN_FREE_CACHE_MB} MB: free space there or set RECBENCH_CACHE_DIR "
                "to a folder on a disk with room",
            )
    out = cfg.get("output") if "output" in cfg else None
    if out:
        why = _writable(Path(str(out)).parent)
        if why:
            problems.add("output", f"output={out} cannot be written: {why}")


# ------------------------------------------------------------------ earlier runs in run_dir


def _launched_rank() -> bool:
    """True in a DDP rank other than 0 (started by recbench.launch, torchrun or SLURM)."""
    for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(k, "0") not in ("", "0"):
            return True
    return False


def overwrite_flag(cfg: DictConfig) -> str:
    return "overwrite=true" if "overwrite" in cfg else "++overwrite=true"


def earlier_run(cfg: DictConfig, run_dir: Path, problems: Problems, early: bool) -> list[Path]:
    """What of an earlier run ``run_dir`` holds that must move aside before this run starts.
    A finished run is a problem unless ``overwrite=true``."""
    if not run_dir.is_dir():
        return []
    names = RUN_ARTEFACTS + (HYDRA_ARTEFACTS if early else ())
    found = [run_dir / n for n in names if (run_dir / n).exists()]
    if early:  # Hydra's job log of the earlier run; stdout.log belongs to a running compare
        found += [p for p in run_dir.glob("*.log") if p.name != "stdout.log"]
    if not any(p.name in RUN_ARTEFACTS for p in found):
        return []  # only Hydra's bookkeeping, which the new run replaces
    if (run_dir / "metrics.json").exists() and not cfg.get("overwrite", False):
        problems.add(
            "overwrite",
            f"{run_dir} holds a finished run (metrics.json): choose another hydra.run.dir, or "
            f"pass {overwrite_flag(cfg)} to move that run into {run_dir}/stale-<time>/ and "
            "train here",
        )
        return []
    return found


def move_aside(run_dir: Path, found: list[Path], log: Callable[[str], None]) -> Path | None:
    if not found:
        return None
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    dest = run_dir / f"stale-{stamp}"
    i = 1
    while dest.exists():
        i += 1
        dest = run_dir / f"stale-{stamp}-{i}"
    dest.mkdir()
    for p in found:
        shutil.move(str(p), str(dest / p.name))
    finished = any(p.name == "metrics.json" for p in found)
    what = "a finished earlier run" if finished else "an earlier run that did not finish"
    log(f"{run_dir} held {what} ({', '.join(sorted(p.name for p in found))}); moved into {dest}")
    return dest


# ------------------------------------------------------------------ entry points


def problems_of(cfg: DictConfig, command: str = "train", run_dir: Path | None = None) -> Problems:
    """Every problem of ``cfg`` that can be found without data (nothing is changed)."""
    problems = Problems()
    _check_values(cfg, problems)
    skip = {"model"} if command == "compare" else set()  # each lineage model has its own keys
    _check_targets(cfg, problems, skip)
    _check_trainer(cfg, problems, command)
    if command in ("train", "compare"):
        _check_fit(cfg, problems)
    _check_folders(cfg, problems, run_dir, command)
    return problems


def _print(msg: str) -> None:
    print(f"recbench: {msg}", file=sys.stderr)


def _remove_fresh(run_dir: Path) -> None:
    """Remove a run directory that holds only what Hydra wrote when this run started (its
    ``.hydra/`` and job log), so a refused run leaves no directory behind."""
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return
    if run_dir.resolve() == Path.cwd().resolve() or not entries:
        return
    if all(
        p.name in HYDRA_ARTEFACTS or (p.suffix == ".log" and p.name != "stdout.log")
        for p in entries
    ):
        for p in entries:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def check(
    cfg: DictConfig,
    command: str = "train",
    run_dir: Path | str | None = None,
    early: bool = False,
    log: Callable[[str], None] = _print,
) -> None:
    """Refuse ``cfg`` with one ``ConfigError`` listing every problem, or prepare its run
    directory (an earlier run's leftovers moved aside). ``early``: called before Hydra made the
    run directory (``EarlyChecks``); otherwise at the start of a run, where a refusal also removes
    the directory Hydra has just made. Takes milliseconds once the modules the run imports
    anyway are loaded."""
    if run_dir is None and command in ("train", "compare"):
        try:
            run_dir = Path(str(cfg.paths.run_dir))
        except Exception:
            run_dir = None
    rd = Path(run_dir) if run_dir is not None else None
    problems = problems_of(cfg, command, rd)
    found: list[Path] = []
    if rd is not None and command == "train" and not _launched_rank():
        found = earlier_run(cfg, rd, problems, early)
    if problems:
        if rd is not None and not early and not _launched_rank():
            _remove_fresh(rd)
        raise problems.error(command)
    if rd is not None:
        move_aside(rd, found, log)


class EarlyChecks(Callback):
    """Hydra callback: ``check`` before Hydra creates the run directory or writes ``.hydra/``."""

    def __init__(self, command: str = "train") -> None:
        self.command = command

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(lambda: self._run_start(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._guard(lambda: self._multirun_start(config))

    def _guard(self, fn: Callable[[], None]) -> None:
        from recbench.errors import RecbenchError

        try:
            fn()
        except RecbenchError as exc:
            from recbench.cli import _fail

            _fail(exc)

    @staticmethod
    def _task_config(config: DictConfig, output_dir: Path) -> DictConfig:
        """The job's config as ``run_job`` will pass it, with ``${hydra:...}`` resolvable."""
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write

        full = copy.deepcopy(config)
        with read_write(full.hydra.runtime), open_dict(full.hydra.runtime):
            full.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(full)
        task = copy.deepcopy(full)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return task

    def _run_start(self, config: DictConfig) -> None:
        if self.command == "bench":
            run_dir = None  # bench writes no run directory
        else:
            run_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        task = self._task_config(config, run_dir or Path.cwd())
        if self.command == "compare":
            problems = problems_of(task, "compare", run_dir)
            if problems:
                raise problems.error("compare")
            return
        check(task, self.command, run_dir, early=True)

    def _multirun_start(self, config: DictConfig) -> None:
        sweep = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
        # the values every job shares; a swept value is checked when its job starts
        problems = problems_of(self._task_config(config, sweep), self.command)
        _check_run_dir(sweep, problems, "sweep directory", "hydra.sweep.dir")
        if sweep.is_dir() and not config.get("overwrite", False):
            done = sorted(sweep.glob("*/metrics.json"))
            if done:
                problems.add(
                    "overwrite",
                    f"the sweep directory {sweep} holds {len(done)} finished run(s) "
                    f"({done[0].parent.name}, ...): choose another hydra.sweep.dir, or pass "
                    f"{overwrite_flag(config)} to move each into its stale-<time>/ folder",
                )
        if problems:
            raise problems.error(self.command)


def hydra_overrides(command: str) -> list[str]:
    """The Hydra overrides that register ``EarlyChecks`` for ``command``."""
    return [
        "++hydra.callbacks.recbench_checks._target_=recbench.validate.EarlyChecks",
        f"++hydra.callbacks.recbench_checks.command={command}",
    ]


__all__ = ["EarlyChecks", "check", "hydra_overrides", "problems_of", "system_folder"]
