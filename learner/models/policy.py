"""Policy + value head over any Hugging Face causal LM, response log-probs for left-padded batches, and the
loaders of a policy and of a weight-soup reference (SALSA)."""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from learner.methods.logprobs import logprobs_from_logits
from learner.methods.soup import weight_soup
from learner.models.lora import is_peft


class PolicyWithValue(nn.Module):
    """`lm` is an AutoModelForCausalLM; the value head reads a last hidden state (TRL's ValueHead).

    ``separate_critic``: the value head sits on its own copy of the transformer (``critic``), started from the
    same weights, as in the Elastic Reset authors' IMDB code (RL4LMs' actor-critic policy) and TRL's PPOTrainer:
    a change of the policy's weights (an Elastic Reset) does not move the value function. Otherwise the value
    head reads the policy's own last hidden state (one forward pass for both).
    """

    def __init__(self, lm: nn.Module, *, separate_critic: bool = False, value: bool = True):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        body = lm.get_base_model() if is_peft(lm) else lm  # a LoRA policy (peft): the model it wraps
        # a LoRA policy's critic is a copy with its own adapters (its base frozen, as the policy's)
        self.critic = copy.deepcopy(getattr(body, body.base_model_prefix)) if separate_critic and value else None
        self.value_head = nn.Linear(hidden, 1) if value else None  # value=False: a critic-free estimator (no value network at all)
        if value:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, L', V) and values (B, L) (None without a value head). ``keep`` > 0: the logits of the last ``keep`` positions only, where
        the LM supports it (``lm_keep_kwargs``), else of all L positions."""
        pos = position_ids(attention_mask)
        kw = lm_keep_kwargs(self.lm, keep)
        if self.value_head is None:  # no value network: values None
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, **kw).logits, None
        if self.critic is None:
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, output_hidden_states=True, **kw)
            return out.logits, self.values(out.hidden_states[-1])  # (B, L', V), (B, L)
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, **kw).logits
        h = self.critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state  # (B, L, H)
        return logits, self.values(h)

    def values(self, h: torch.Tensor) -> torch.Tensor:
        """The value head on last hidden states (B, L, H) -> (B, L), in float32 even under bf16 autocast: a bf16
        value (8 bits of mantissa: +-0.02 at 5) would round the advantages' r + V' - V and the value loss."""
        with torch.autocast(h.device.type, enabled=False):
            return self.value_head(h.float()).squeeze(-1)


def lm_keep_kwargs(lm: nn.Module, keep: int) -> dict:
    """``{"logits_to_keep": keep}`` when ``lm.forward`` takes it (Hugging Face causal LMs since 4.50: the LM head then
    runs on the last ``keep`` positions only), else ``{}``. The prompt's logits are never used: skipping them saves
    the LM head's matmul (and its backward) on every prompt position."""
    if keep <= 0 or not SPEEDUPS.response_logits_only:
        return {}
    if is_peft(lm):  # peft passes **kwargs on to the model it wraps
        lm = lm.get_base_model()
    fwd = type(lm).forward
    ok = _KEEP_ARG.get(fwd)
    if ok is None:
        ok = _KEEP_ARG[fwd] = "logits_to_keep" in inspect.signature(fwd).parameters
    return {"logits_to_keep": keep} if ok else {}


_KEEP_ARG: dict = {}


@dataclass
class LearnSpeedups:
    """The learn phase's speed-ups, each exact up to float rounding and all on in every run. They are switches only
    so that bench/learn_phase.py can measure each one's share side by side in one process."""

    response_logits_only: bool = True  # the LM head on the response positions only (lm_keep_kwargs)
    entropy_without_grad: bool = True  # PPO: with entropy_coef 0 the entropy is a statistic, computed without a graph
    fused_adam: bool = True  # make_adam: PyTorch's fused Adam kernel
    trim_padding: bool = True  # PPO: a minibatch drops the columns that are padding in all its rows


SPEEDUPS = LearnSpeedups()


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
    keep = R + 1  # positions P-1 .. P+R-1 are the last R + 1 of the P + R: the logits predicting the response (and one more)
    if isinstance(lm_or_policy, PolicyWithValue):
        logits, values = lm_or_policy(ids, att, keep=keep)
    else:
        logits = lm_or_policy(input_ids=ids, attention_mask=att, position_ids=position_ids(att), **lm_keep_kwargs(lm_or_policy, keep)).logits
        values = None
    # (B, L, V) when the LM kept every position, else (B, R + 1, V) starting at position P - 1
    logits = (response_slice(logits, P, R) if logits.shape[1] == ids.shape[1] else logits[:, :R]).float()
    logp = logprobs_from_logits(logits, ids[:, P : P + R])
    out = [logp]
    if with_values:
        if values is None:
            raise ValueError("values were asked of a policy without a value head (a critic-free ppo.advantage)")
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
    return float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)  # sharded (fsdp2): the norm over every shard


def make_adam(params, lr: float, device: torch.device, *, sharded: bool = False) -> torch.optim.Adam:
    """Adam with PyTorch's fused kernel where this torch has it for ``device`` (CPU and CUDA since 2.4): one kernel
    for every parameter instead of a loop of small ones (a third of the optimiser's time on the CPU, measured in
    bench/learn_phase.py); the per-parameter loop elsewhere. Same update rule, equal to float rounding."""
    params = list(params)
    if sharded:  # DTensor shards (fsdp2): the foreach implementation, which DTensor supports
        return torch.optim.Adam(params, lr=lr, foreach=True)
    try:
        return torch.optim.Adam(params, lr=lr, fused=SPEEDUPS.fused_adam and device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the leading columns that are padding in every row of a left-padded ``pad_batch`` batch (a minibatch whose
    prompts are all shorter than the batch's longest): the same positions, logits and values, fewer columns."""
    if not SPEEDUPS.trim_padding:
        return batch
    att = batch["attention_mask"]
    real = att.any(0)  # (L,)
    first = int(real.to(torch.int8).argmax()) if bool(real.any()) else 0
    first = min(first, batch["prompt_width"] - 1)  # keep position P - 1, whose logits predict the first response token
    if first <= 0:
        return batch
    # contiguous: a column slice is a strided view, and a compiled body (runtime.learner.compile) guards on strides
    return {**batch, "input_ids": batch["input_ids"][:, first:].contiguous(), "attention_mask": att[:, first:].contiguous(),
            "prompt_width": batch["prompt_width"] - first}


def compile_bodies(*roots: nn.Module) -> list[nn.Module]:
    """torch.compile, in place, every transformer body (a Hugging Face base model: ``m.base_model is m``) under
    ``roots``; returns them. In place (``nn.Module.compile``), so parameter names, state dicts, weight sync, checkpoints
    and Elastic Reset see the same module. dynamic=True: one graph for every batch and sequence length (rollout
    lengths vary by iteration; a static graph would recompile for each). The LM head and the log-softmax stay eager:
    they run on the response positions only."""
    import torch._dynamo.config as dyn

    # One Python function (transformers' forward wrapper) serves every body, so they share dynamo's per-function graph
    # limit (8): grad and no-grad passes of the policy and the value network, the frozen reference, with and without
    # the KV-cache argument, already exceed it, and every variant past the limit ran eagerly (the learn phase in Ray was
    # then slower than without compile). 64 holds them all; the accumulated limit (256) still stops a runaway.
    dyn.recompile_limit = max(int(getattr(dyn, "recompile_limit", 8)), 64)
    done: list[nn.Module] = []
    for root in roots:
        for m in root.modules():
            if getattr(m, "base_model", None) is m and not any(m is d for d in done):
                m.compile(dynamic=True)
                done.append(m)
    if not done:
        raise ValueError("runtime.learner.compile: no transformer body (a Hugging Face base model) found to compile")
    return done


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
