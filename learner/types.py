"""Typed contracts between the roles: prompts -> Rollouts -> ScoredRollouts -> train stats (a dict).

Small on purpose (purejaxrl's Transition, not veRL's DataProto). Lists of python ints/floats so a
batch crosses process boundaries (Ray) cheaply and without device assumptions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# The names a config may choose, defined once: the schema (learner/config) types its fields with them and the maths
# (learner/methods) that accepts them lists them with typing.get_args.
Algorithm = Literal["ppo", "fdpg", "quark"]
Aggregation = Literal["mean", "wco", "uwo"]
Divergence = Literal["forward_kl", "reverse_kl", "js", "tv"]
KLEstimator = Literal["k1", "k2", "k3"]
# PPO's advantage: GAE with a value network, or a critic-free estimator over the samples of each prompt (issue 26)
AdvantageEstimator = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")  # a baseline from the other samples of the prompt
LossAggregation = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


@dataclass
class Rollouts:
    prompts: list[str]
    prompt_ids: list[list[int]]  # EOS-prefixed prompt tokens
    response_ids: list[list[int]]  # generated tokens (length <= max_new_tokens)
    behaviour_logprobs: list[list[float]]  # log pi_behaviour(token) per response token, from the engine
    responses: list[str]  # decoded response text
    policy_version: int  # learner version whose weights produced these samples
    engine: str = "transformers"
    n_prefix: int = 0  # leading control tokens in every prompt_ids (Quark's reward token), not part of the prompt text
    # per prompt, what a dataset task passes its scorers besides the rendered prompt: {"prompt": the user's prompt (a string or a
    # messages list), metadata column: value, ...}; empty for the imdb task
    meta: list[dict] = field(default_factory=list)
    # per sample, the distinct prompt it answers (generation.n_per_prompt samples share one): the group estimators' groups;
    # empty = consecutive blocks of n_per_prompt
    groups: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, indices: list[int]) -> "Rollouts":
        """The rollouts at these positions, in this order."""
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return Rollouts(pick(self.prompts), pick(self.prompt_ids), pick(self.response_ids), pick(self.behaviour_logprobs),
                        pick(self.responses), self.policy_version, self.engine, self.n_prefix, pick(self.meta) if self.meta else [],
                        pick(self.groups) if self.groups else [])

    @property
    def plain_prompt_ids(self) -> list[list[int]]:
        """prompt_ids without the control prefix: what the reference and the initial model see."""
        return [p[self.n_prefix :] for p in self.prompt_ids] if self.n_prefix else self.prompt_ids

    @property
    def texts(self) -> list[str]:
        return [p + r for p, r in zip(self.prompts, self.responses)]


@dataclass
class ScoredRollouts:
    rollouts: Rollouts
    proxy_scores: list[list[float]]  # (B, k) every ensemble member's score
    reward: list[float]  # (B,) the aggregate the config chooses (mean / wco / uwo)
    spread: list[float]  # (B,) std across members
    gold: list[float] | None = None  # (B,) gold reward, for logging only (never trained on)
    extra: dict = field(default_factory=dict)


class Learner(Protocol):
    """What the roles and the driver may call on a learner (learner/learners/base.py implements the shared part).

    ``version`` counts weight changes the rollout engines must receive (a PPO step, an Elastic Reset, a lagged
    proposal's refresh); ``iteration`` counts ``step`` calls; ``kl_ctl`` is the KL controller (PPO) or None.
    """

    iteration: int
    version: int
    kl_ctl: Any

    def step(self, scored: ScoredRollouts) -> dict[str, float]: ...

    def policy_state_dict(self) -> dict[str, Any]: ...

    def reset_now(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, sd: dict) -> None: ...
