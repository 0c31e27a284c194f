"""Optimisers the models' papers train with that torch does not ship: FTRL-Proximal, and one
optimiser per part of a model (Wide&Deep: FTRL on the wide part, AdaGrad on the deep part)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from recbench.errors import ConfigError


class FTRLProximal(torch.optim.Optimizer):
    """FTRL-Proximal with L1 and L2 (McMahan et al., KDD 2013, Algorithm 1), per coordinate i:

    ``σ_i = (√(n_i + g_i²) − √n_i) / α``, ``z_i += g_i − σ_i w_i``, ``n_i += g_i²``, then
    ``w_i = 0`` if ``|z_i| ≤ λ1``, else ``w_i = −(z_i − sgn(z_i) λ1) / ((β + √n_i) / α + λ2)``.

    The per-coordinate learning rate is ``α / (β + √n_i)``; the L1 term sets every weight whose
    accumulated gradient ``|z_i|`` stays within ``λ1`` exactly to zero, which is what makes the
    wide model sparse. A coordinate that has never had a gradient (``n_i = 0``) keeps its value
    (the paper's ``w = 0`` for a parameter that starts at zero).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        if alpha <= 0 or beta < 0 or l1 < 0 or l2 < 0:
            raise ValueError(
                f"FTRL needs alpha > 0 and beta, l1, l2 >= 0; got {alpha, beta, l1, l2}"
            )
        super().__init__(params, {"alpha": alpha, "beta": beta, "l1": l1, "l2": l2})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, beta, l1, l2 = group["alpha"], group["beta"], group["l1"], group["l2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FTRLProximal does not take sparse gradients")
                g = p.grad
                state = self.state[p]
                if not state:
                    state["z"] = torch.zeros_like(p)
                    state["n"] = torch.zeros_like(p)
                z, n = state["z"], state["n"]
                n_new = n + g * g
                sigma = (n_new.sqrt() - n.sqrt()) / alpha
                z.add_(g - sigma * p)
                n.copy_(n_new)
                w = -(z - z.sign() * l1) / ((beta + n.sqrt()) / alpha + l2)
                w = torch.where(z.abs() <= l1, torch.zeros_like(w), w)
                p.copy_(torch.where(n > 0, w, p))
        return loss


class PerPartOptimizer(torch.optim.Optimizer):
    """One optimiser per named part of a model: ``parts`` maps a part name to an optimiser
    factory (``functools.partial`` of an optimiser class, as Hydra's ``_partial_`` builds), and
    the model's ``param_parts()`` maps the same names to its parameters.

    It is one ``torch.optim.Optimizer`` to the trainer: ``param_groups`` are the parts'
    groups (a scheduler scales each), ``step`` evaluates the closure once and steps every part.
    Built with the model, not its parameters (``takes_model``).
    """

    takes_model = True

    def __init__(self, model: nn.Module, parts: Mapping[str, Callable[..., torch.optim.Optimizer]]):
        get = getattr(model, "param_parts", None)
        if get is None:
            raise ConfigError(
                f"{type(model).__name__} has no parts to give separate optimisers "
                "(no param_parts()); use a single optimiser such as optimizer=adam"
            )
        groups: dict[str, list[nn.Parameter]] = {k: list(v) for k, v in get().items() if list(v)}
        missing = sorted(set(groups) - set(parts))
        if missing:
            raise ConfigError(
                f"{type(model).__name__} has parts {sorted(groups)} but the optimizer config "
                f"names {sorted(parts)}: add an optimiser for {missing} under optimizer.parts"
            )
        named = {id(p) for ps in groups.values() for p in ps}
        left = [n for n, p in model.named_parameters() if id(p) not in named and p.requires_grad]
        if left:
            raise ConfigError(f"parameters in no part of {type(model).__name__}: {left[:5]}")
        self.optimizers = {k: parts[k](params=groups[k]) for k in groups}
        everything = [p for ps in groups.values() for p in ps]
        super().__init__(everything, {})
        # the parts' own groups: what schedulers, zero_grad and logging see
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {k: opt.state_dict() for k, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[k])


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], model: nn.Module
) -> torch.optim.Optimizer:
    """``factory(model=model)`` for optimisers built with the model (``takes_model``), else
    ``factory(params=model.parameters())``."""
    target = getattr(factory, "func", factory)
    if getattr(target, "takes_model", False):
        return factory(model=model)
    params = list(model.parameters())
    if _fusable(target, getattr(factory, "keywords", {}), params):
        # one kernel over every tensor instead of a Python loop of small ops: a DeepFM step on
        # two CPU cores spends ~12% of its time in the unfused Adam step
        return factory(params=params, fused=True)
    return factory(params=params)


FUSABLE = (torch.optim.Adam, torch.optim.AdamW)
FUSED_DEVICES = ("cpu", "cuda")


def _fusable(target: Any, keywords: Mapping[str, Any], params: list[Tensor]) -> bool:
    """Whether to ask for torch's fused Adam/AdamW: the config left ``fused`` and ``foreach``
    unset, and every parameter is a dense floating tensor on a device with the fused kernel
    (the same update, computed in one pass)."""
    if target not in FUSABLE or "fused" in keywords or "foreach" in keywords:
        return False
    return bool(params) and all(
        p.device.type in FUSED_DEVICES and p.is_floating_point() and not p.is_sparse for p in params
    )
