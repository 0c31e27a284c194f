"""Target signatures: every node with a ``_target_`` imports, and each of its keys is a parameter
of the callable (no ``**kwargs`` swallowing a misspelled key), of the type its annotation names.
A target not imported yet is read from its source, so that a refused command does not wait for
Lightning to import."""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import importlib.util
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from recbench.validate.problems import Problems, _fmt
from recbench.validate.values import SKIP_NODES, _is_int

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


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
    refused command does not wait seconds for Lightning to import; once Lightning is loaded (a
    run forked from a compare's fork server) importing the module costs less than parsing it.
    Raises when the target cannot be imported."""
    module, _, name = target.rpartition(".")
    if module not in sys.modules and "pytorch_lightning" not in sys.modules:
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
