"""Elastic Reset (Noukhovitch et al. 2023; docs/methods.md s.2).

At each EMA update: theta_ema <- eta * theta_ema + (1 - eta) * theta. The caller decides when: the
authors update once per PPO iteration, after all epochs on a rollout batch (their IMDB code), or once
per epoch (their StackLLaMA code); see learner/learners/ppo.py.
Every n_reset iterations (the caller decides when): theta <- theta_ema, then theta_ema <- theta_0.
The value function is not averaged (paper, s.3); it can optionally be restored to its initial weights,
and the optimiser state cleared, at a reset (the authors keep it: reset_opt is False).

Parameters are matched by the names of ``model.named_parameters()``, which lists a tied Parameter
once, so tied weights are tracked (and updated) exactly once. Buffers are not tracked.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn


def _default_exclude(name: str) -> bool:
    return name.startswith("value_head")


class ElasticReset:
    """EMA of the policy with periodic reset. ``exclude(name)`` -> True keeps a parameter out of the EMA."""

    def __init__(self, model: nn.Module, *, eta: float, exclude: Callable[[str], bool] | None = None,
                 frozen: Callable[[str], bool] | None = None) -> None:
        if not 0.0 <= eta < 1.0:
            raise ValueError(f"eta must be in [0, 1), got {eta}")
        self.eta = float(eta)
        self.exclude = exclude if exclude is not None else _default_exclude
        # theta_0 of every parameter, excluded ones too, so reset_value_head can restore them; ``frozen`` ones (a LoRA policy's
        # base weights, which never change) are neither averaged nor stored
        frozen = frozen or (lambda n: False)
        self.initial: dict[str, Tensor] = {n: p.detach().clone() for n, p in model.named_parameters() if not frozen(n)}
        # The EMA is kept in float32 for low-precision models: with eta = 0.995 a bf16 EMA would round
        # the (1 - eta) * theta increment away.
        self.ema: dict[str, Tensor] = {
            n: t.clone().float() if t.is_floating_point() else t.clone()
            for n, t in self.initial.items()
            if not self.exclude(n)
        }
        self.n_updates = 0
        self.n_resets = 0

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        missing = [n for n in self.ema if n not in params]
        if missing:
            raise KeyError(f"model lacks tracked parameters {missing[:5]} (of {len(missing)})")
        return params

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """theta_ema <- eta * theta_ema + (1 - eta) * theta, in place (once per PPO iteration in the authors' code)."""
        params = self._params(model)
        for name, ema in self.ema.items():
            ema.mul_(self.eta).add_(params[name].detach().to(ema.dtype), alpha=1.0 - self.eta)
        self.n_updates += 1

    @torch.no_grad()
    def reset(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        reset_optimizer: bool = False,
        reset_value_head: bool = False,
    ) -> None:
        """theta <- theta_ema; theta_ema <- theta_0; optionally clear the optimiser state and restore excluded params."""
        params = self._params(model)
        for name, ema in self.ema.items():
            params[name].copy_(ema)
            ema.copy_(self.initial[name])
        if reset_value_head:
            for name, p in params.items():
                if name not in self.ema and name in self.initial:
                    p.copy_(self.initial[name])
        if optimizer is not None and reset_optimizer:
            optimizer.state.clear()  # a defaultdict; Adam re-creates its moments on the next step
        self.n_resets += 1

    def ema_state_dict(self) -> dict[str, Tensor]:
        """The EMA weights by parameter name (the live tensors, float32 for float params; clone to keep)."""
        return dict(self.ema)

    def state_dict(self) -> dict[str, Any]:
        return {
            "eta": self.eta,
            "n_updates": self.n_updates,
            "n_resets": self.n_resets,
            "ema": {n: t.clone() for n, t in self.ema.items()},
            "initial": {n: t.clone() for n, t in self.initial.items()},
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if set(d["ema"]) != set(self.ema) or set(d["initial"]) != set(self.initial):
            raise KeyError("ElasticReset state_dict tracks different parameters than this instance")
        self.eta = float(d["eta"])
        self.n_updates = int(d["n_updates"])
        self.n_resets = int(d["n_resets"])
        for n, t in d["ema"].items():
            self.ema[n].copy_(t)
        for n, t in d["initial"].items():
            self.initial[n].copy_(t)
