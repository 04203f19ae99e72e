"""Policy + value head over any Hugging Face causal LM, response log-probs for left-padded batches, and the
loaders of a policy and of a weight-soup reference (SALSA)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from learner.methods.logprobs import logprobs_from_logits
from learner.methods.soup import weight_soup


class PolicyWithValue(nn.Module):
    """`lm` is an AutoModelForCausalLM; the value head reads a last hidden state (TRL's ValueHead).

    ``separate_critic``: the value head sits on its own copy of the transformer (``critic``), started from the
    same weights, as in the Elastic Reset authors' IMDB code (RL4LMs' actor-critic policy) and TRL's PPOTrainer:
    a change of the policy's weights (an Elastic Reset) does not move the value function. Otherwise the value
    head reads the policy's own last hidden state (one forward pass for both).
    """

    def __init__(self, lm: nn.Module, *, separate_critic: bool = False):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.critic = copy.deepcopy(getattr(lm, lm.base_model_prefix)) if separate_critic else None
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = position_ids(attention_mask)
        if self.critic is None:
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, output_hidden_states=True)
            return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1)  # (B, L, V), (B, L)
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
        h = self.critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state  # (B, L, H)
        return logits, self.value_head(h).squeeze(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real token, so left padding does not shift them (as in generate / vLLM)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pad_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts to P, right-pad responses to R: input (B, P+R), response mask (B, R)."""
    P = max(len(p) for p in prompt_ids)
    R = max(len(r) for r in response_ids)
    B = len(prompt_ids)
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    att = torch.zeros((B, P + R), dtype=torch.long)
    rmask = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, P - len(p) : P] = torch.tensor(p)
        ids[i, P : P + len(r)] = torch.tensor(r)
        att[i, P - len(p) : P + len(r)] = 1
        rmask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": att, "response_mask": rmask, "prompt_width": P}


def response_slice(x: torch.Tensor, prompt_width: int, resp_len: int) -> torch.Tensor:
    """Outputs at positions P-1 .. P+R-2 predict response tokens P .. P+R-1. (B, L, ...) -> (B, R, ...)"""
    return x[:, prompt_width - 1 : prompt_width - 1 + resp_len]


def response_logprobs(lm_or_policy: nn.Module, batch: dict[str, torch.Tensor], *, with_values: bool = False, return_logits: bool = False):
    """log pi(response token) (B, R) [and values (B, R), logits (B, R, V)] for a `pad_batch` batch."""
    ids, att, P = batch["input_ids"], batch["attention_mask"], batch["prompt_width"]
    R = batch["response_mask"].shape[1]
    if isinstance(lm_or_policy, PolicyWithValue):
        logits, values = lm_or_policy(ids, att)
    else:
        logits = lm_or_policy(input_ids=ids, attention_mask=att, position_ids=position_ids(att)).logits
        values = None
    logits = response_slice(logits, P, R).float()
    logp = logprobs_from_logits(logits, ids[:, P : P + R])
    out = [logp]
    if with_values:
        out.append(response_slice(values, P, R))
    if return_logits:
        out.append(logits)
    return out[0] if len(out) == 1 else tuple(out)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, max_grad_norm: float, *, reduce_grads=None) -> float:
    """zero_grad, backward, (reduce the gradients across data-parallel ranks), clip the gradient norm, step;
    returns the norm before clipping. The backward runs outside any autocast region (as PyTorch advises)."""
    params = list(params)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(loss.device.type, enabled=False):
        loss.backward()
    if reduce_grads is not None:
        reduce_grads(params)
    gn = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    return float(gn)


def load_policy(path, dtype=torch.float32):
    """The causal LM in a Hugging Face folder (or hub name): the runtime loader every role uses."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def load_soup(paths: list[str | Path], weights: list[float]) -> torch.nn.Module:
    """The weight soup sum_i w_i theta_i of the models at ``paths`` (SALSA's reference), as a causal LM."""
    models = [load_policy(p) for p in paths]
    ref = models[0]
    ref.load_state_dict(weight_soup([m.state_dict() for m in models], weights))
    return ref
