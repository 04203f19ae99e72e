"""Quark: quantized reward konditioning (Lu et al. 2022; docs/methods.md s.6).

Every sample so far goes into a data pool. The pool is sorted by reward into K quantiles (K = 5 in
the paper) and each sample's prompt is prefixed with its quantile's reward token. Training minimises
the token NLL of the response given the conditioned prompt + beta * KL(pi || pi_ref) (exact, per token,
full vocabulary; beta = 0.05) - alpha * entropy (alpha = 0.06). The reference model sees the prompt
without the reward token. Sampling conditions on the highest-reward token, here token K - 1.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from learner.methods.kl import exact_kl_from_logits
from learner.methods.logprobs import entropy_from_logits, logprobs_from_logits, masked_mean


def quantile_tokens(rewards: ArrayLike, k: int) -> NDArray[np.int64]:
    """Quantile index in [0, k - 1] per sample; k - 1 = highest rewards. rewards: (N,) -> (N,) int64.

    Bins are equal-size by rank: bin = floor(rank * k / N), so sizes differ by at most one.
    Tied rewards are ranked in input order (stable sort), so a tie can straddle two bins.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)  # (N,)
    if np.any(np.isnan(r)):
        raise ValueError("rewards contain NaN")
    N = r.size
    rank = np.empty(N, dtype=np.int64)
    rank[np.argsort(r, kind="stable")] = np.arange(N)  # 0 = lowest reward
    return (rank * k) // max(N, 1)


class PoolSample(NamedTuple):
    prompt: Any
    response: Any
    reward: float
    quantile: int


class DataPool:
    """All (prompt, response, reward) seen so far, oldest first; ``max_size`` drops the oldest beyond it.

    Prompts and responses are stored as given (text or token ids); ``assign(k)`` tags each with its
    current reward quantile (recomputed over the whole pool, since quantiles move as the pool grows).
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be >= 1 or None, got {max_size}")
        self.max_size = max_size
        self.prompts: list[Any] = []
        self.responses: list[Any] = []
        self.rewards: list[float] = []

    def add(self, prompts: Sequence[Any], responses: Sequence[Any], rewards: ArrayLike) -> None:
        rewards = [float(x) for x in np.asarray(rewards, dtype=np.float64).reshape(-1)]
        if not len(prompts) == len(responses) == len(rewards):
            raise ValueError(f"prompts, responses and rewards differ in length: {len(prompts)}, {len(responses)}, {len(rewards)}")
        self.prompts.extend(prompts)
        self.responses.extend(responses)
        self.rewards.extend(rewards)
        if self.max_size is not None and len(self.rewards) > self.max_size:
            drop = len(self.rewards) - self.max_size
            del self.prompts[:drop], self.responses[:drop], self.rewards[:drop]

    def assign(self, k: int) -> list[PoolSample]:
        """(prompt, response, reward, quantile) per pool sample, oldest first."""
        q = quantile_tokens(self.rewards, k)
        return [PoolSample(p, s, r, int(b)) for p, s, r, b in zip(self.prompts, self.responses, self.rewards, q)]

    def __len__(self) -> int:
        return len(self.rewards)

    def state_dict(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "prompts": list(self.prompts), "responses": list(self.responses),
                "rewards": list(self.rewards)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.max_size = d["max_size"]
        self.prompts, self.responses, self.rewards = list(d["prompts"]), list(d["responses"]), [float(x) for x in d["rewards"]]


def reward_token_strings(k: int) -> list[str]:
    """Special-token strings for the K quantiles, lowest first: ["<|rq0|>", ..., "<|rq{k-1}|>"]."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [f"<|rq{i}|>" for i in range(k)]


def condition(prompt_ids: Sequence[int], token_id: int) -> list[int]:
    """The policy's input: the reward token followed by the prompt (the reference gets prompt_ids alone)."""
    return [int(token_id), *prompt_ids]


def quark_loss(*, logits: Tensor, ref_logits: Tensor, tokens: Tensor, mask: Tensor, kl_coef: float = 0.05,
               entropy_coef: float = 0.06, n_base: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """Quark objective (Lu et al. 2022): NLL + kl_coef * KL(pi || pi_ref) - entropy_coef * H(pi), token means.

    logits: (B, T, V + K) policy logits at the response positions, on the reward-conditioned input;
    ref_logits: (B, T, V') reference logits at the same response positions, unconditioned input (no grad),
    V' = V (an SFT model or a soup) or V + K (a copy of the expanded start policy);
    tokens: (B, T) response tokens; mask: (B, T), 1 on response tokens. Each term is a masked mean over
    all valid tokens of the batch.
    n_base: V, the vocabulary without the K reward tokens. The KL excludes them, as the official code does
    (GXimingLu/Quark main.py:244 slices the policy's logits to ``[:, :, :-len(tree_tokens)]`` and line 252
    takes KLDivLoss(log_softmax(ref), softmax(policy)) summed over that vocabulary): both distributions are
    renormalised over the V ordinary tokens. NLL and entropy use the full V + K logits, as there.
    """
    nll = masked_mean(-logprobs_from_logits(logits, tokens), mask)  # ()
    n = logits.shape[-1] if n_base is None else int(n_base)
    if ref_logits.shape[-1] < n:
        raise ValueError(f"the reference has {ref_logits.shape[-1]} logits, fewer than the {n} ordinary tokens the KL needs")
    kl = masked_mean(exact_kl_from_logits(logits[..., :n], ref_logits[..., :n].detach()), mask)  # ()
    ent = masked_mean(entropy_from_logits(logits), mask)  # ()
    loss = nll + kl_coef * kl - entropy_coef * ent
    stats = {"loss/nll": nll.item(), "loss/kl": kl.item(), "loss/entropy": ent.item()}
    return loss, stats
