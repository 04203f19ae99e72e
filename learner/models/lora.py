"""LoRA on the policy (``policy.lora``), with peft: only the adapters train, the reference is the same model with its
adapters switched off (no second copy of the weights), and the rollout engines receive merged weights.

- ``wrap(lm, settings)``: ``peft.get_peft_model`` with a ``LoraConfig`` (B starts at zero, so the wrapped policy is pi_0).
- ``AdaptersOff(peft_lm)``: the KL reference; its forward runs the policy with ``disable_adapter()``. It registers no
  parameters of its own: ``.eval()``, ``.requires_grad_(False)`` and ``.to()`` on it leave the policy untouched.
- ``merged_state_dict(peft_lm)``: the base model's parameter names with W + scaling * B A for every adapted layer,
  computed without modifying the model (what ``merge_and_unload`` would save), for the weight sync and exports.
- ``adapter_names(model)``: the trainable parameters (adapters, and a value head beside them): what a checkpoint holds.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

ADAPTER = "default"


def is_peft(lm: nn.Module) -> bool:
    return hasattr(lm, "get_base_model") and hasattr(lm, "disable_adapter")


def lora_config(settings: Any):
    from peft import LoraConfig

    targets = settings.target_modules if settings.target_modules is not None else "all-linear"  # peft: every Linear but the LM head
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM")


def wrap(lm: nn.Module, settings: Any) -> nn.Module:
    """The policy with LoRA adapters on ``settings.target_modules``; every base weight frozen."""
    from peft import get_peft_model

    try:
        return get_peft_model(lm, lora_config(settings))
    except ValueError as e:  # peft names the modules it could not find
        names = sorted({n.rsplit(".", 1)[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"policy.lora.target_modules {settings.target_modules!r}: {e}. This policy's linear layers: {', '.join(names)}") from e


class AdaptersOff(nn.Module):
    """The frozen reference pi_0 as a view of a LoRA policy: the policy's forward with its adapters disabled."""

    def __init__(self, peft_lm: nn.Module):
        super().__init__()
        object.__setattr__(self, "_peft", peft_lm)  # not a submodule: its parameters are the policy's, not the reference's

    @property
    def config(self):
        return self._peft.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, logits_to_keep: int = 0, **kw):
        with self._peft.disable_adapter():
            return self._peft(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              logits_to_keep=logits_to_keep, **kw)


@torch.no_grad()
def merged_state_dict(peft_lm: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapted layer's weight merged (W + scaling * B @ A); the model is unchanged.
    Sharded (fsdp2) a merged weight is a ``Lazy`` one, gathered and merged when the weight sync reaches it, and the others
    stay DTensors: no rank ever holds the whole model."""
    from peft.tuners.lora import LoraLayer

    from learner.parallel import Lazy, full, is_dtensor

    base = peft_lm.get_base_model()
    out = {}
    for k, v in base.state_dict().items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v.detach()
    for name, m in base.named_modules():
        if isinstance(m, LoraLayer) and ADAPTER in getattr(m, "lora_A", {}):
            w = m.get_base_layer().weight
            if not is_dtensor(w):
                out[f"{name}.weight"] = w.detach() + m.get_delta_weight(ADAPTER).to(w.dtype)
                continue
            if getattr(m, "fan_in_fan_out", False):
                raise ValueError(f"{name}: a fan-in-fan-out (Conv1D) LoRA layer cannot be merged sharded")
            a, b, scale = m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight, float(m.scaling[ADAPTER])

            def make(w=w, a=a, b=b, scale=scale):
                return full(w).detach() + (scale * (full(b).float() @ full(a).float())).to(w.dtype)

            out[f"{name}.weight"] = Lazy(w.shape, w.dtype, make)
    return out


def adapter_names(model: nn.Module) -> set[str]:
    """Names (state-dict keys) of the parameters that train: the adapters and, in a policy-with-value, its value head."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def merge_into(lm: nn.Module, adapters: dict[str, torch.Tensor], settings: Any) -> nn.Module:
    """A plain causal LM: ``lm`` (the start policy) with ``adapters`` (peft state-dict names) merged in; for exports."""
    peft_lm = wrap(lm, settings)
    missing, unexpected = peft_lm.load_state_dict(adapters, strict=False)
    wanted = adapter_names(peft_lm)
    if unexpected or wanted - set(adapters):
        raise ValueError(f"the checkpoint's LoRA adapters do not fit this policy: missing {sorted(wanted - set(adapters))[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return peft_lm.merge_and_unload()
