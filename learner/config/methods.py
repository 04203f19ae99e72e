"""Sections of the methods: generation, the KL penalty, Elastic Reset, the ensemble, PPO, f-DPG, Quark and
the reference model (SALSA's soup). Defaults follow the papers (docs/methods.md) and cite them."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from learner.config.base import Strict
from learner.types import AdvantageEstimator, Aggregation, Divergence, KLEstimator, LossAggregation


class GenerationConfig(Strict):
    max_new_tokens: int = Field(48, ge=1, description="Response length (Elastic Reset IMDB: 48 new tokens).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature. 1.0 keeps samples from pi itself, so the KL estimates are unbiased.")
    top_k: int = Field(0, ge=0, description="0 = no top-k truncation (pure sampling, as in the papers).")
    n_per_prompt: int = Field(
        1, ge=1, le=1024, description="Samples per distinct prompt in each batch (PPO and Quark; f-DPG has fdpg.samples_per_prompt): "
        "the batch is batch_size / n_per_prompt prompts, each sampled n_per_prompt times with its own seed, consecutive rows one "
        "group. The group estimators (ppo.advantage: grpo, dr_grpo, rloo, reinforce_pp_baseline) need >= 2.")


class KLConfig(Strict):
    """KL control (Ziegler et al. 2019): per-token reward r_t = -beta * kl_t (+ sequence reward at the end)."""

    mode: Literal["fixed", "adaptive"] = Field("adaptive", description="fixed beta, or adaptive beta driven toward `target`.")
    coef: float = Field(0.001, ge=0, description="Initial beta (Elastic Reset IMDB: 0.001 adaptive; Coste et al. PPO: 0.01 with WCO/UWO).")
    target: float = Field(1.0, gt=0, description="Adaptive target KL in nats per sequence (Elastic Reset IMDB: 1.0).")
    horizon: int = Field(10_000, ge=1, description="Adaptive controller horizon in samples (Ziegler et al.: 10,000).")
    estimator: KLEstimator = Field("k1", description="Per-token KL estimator in the reward: k1 = logr, k2 = logr^2/2, k3 = exp(-logr)-1+logr.")
    placement: Literal["reward", "loss"] = Field(
        "reward", description="PPO: where the KL penalty acts. reward = -beta * kl_t in each token's reward (Ziegler et al.; "
        "today's PPO); loss = beta * the aggregated per-token estimate (kl.estimator, with its gradient) added to the policy loss "
        "(GRPO's form; k3 is GRPO's and veRL's low_var_kl, k2 gives the KL's gradient on on-policy samples). The coefficient is "
        "fixed or adaptive either way.")
    reference: Literal["initial", "ema"] = Field(
        "initial",
        description="KL reference: the initial model, or the Elastic Reset EMA (as the authors' IMDB code does unless a separate EMA is configured).",
    )


class ElasticResetConfig(Strict):
    """Elastic Reset (Noukhovitch et al. 2023)."""

    enabled: bool = Field(False, description="Keep an EMA of the policy and reset periodically.")
    eta: float = Field(0.995, gt=0, lt=1, description="EMA decay: theta_ema <- eta*theta_ema + (1-eta)*theta at each EMA update (paper: 0.995).")
    update: Literal["iteration", "epoch", "step"] = Field(
        "iteration", description="When the EMA is updated: once per PPO iteration, after all epochs on its rollout batch (the authors' "
        "IMDB code: EMAPPO.learn updates after train(), ema_update_train False); once per PPO epoch (their StackLLaMA code); or after "
        "every optimiser step (faster-moving EMA, a weaker reset).")
    every: int = Field(17, ge=1, description="Reset period in PPO iterations (paper, IMDB: 17).")
    reset_optimizer: bool = Field(False, description="Clear the optimiser state at a reset (the authors' reset_opt, False in both code bases).")
    reset_value_head: bool = Field(False, description="Also restore the value head to its initial weights at a reset.")
    include_value_head: bool = Field(False, description="Average the value head in the EMA too (the paper does not).")


class EnsembleConfig(Strict):
    """Aggregation of the proxy ensemble (Coste et al. 2023)."""

    aggregation: Aggregation = Field("mean", description="mean; wco = min over members; uwo = mean - lambda * variance.")
    uwo_lambda: float | None = Field(None, ge=0, description="UWO lambda (Coste et al.: about 0.1 for PPO, 0.5 for best-of-n). Only with aggregation=uwo; defaults to 0.1 there.")

    @model_validator(mode="after")
    def _lambda(self) -> "EnsembleConfig":
        if self.aggregation != "uwo" and self.uwo_lambda is not None:
            raise ValueError(f"ensemble.uwo_lambda applies only to aggregation 'uwo', not '{self.aggregation}'; remove it or set aggregation: uwo")
        return self

    @property
    def lam(self) -> float:
        return 0.1 if self.uwo_lambda is None else self.uwo_lambda


class PPOConfig(Strict):
    lr: float = Field(1.41e-5, gt=0, description="Adam learning rate (TRL/gpt2-imdb default 1.41e-5; Elastic Reset IMDB 1e-6 for GPT-2 124M). Tiny local models need more.")
    batch_size: int = Field(64, ge=1, description="Prompts (rollouts) per PPO iteration.")
    minibatch_size: int = Field(16, ge=1, description="Rollouts per gradient step.")
    epochs: int = Field(4, ge=1, description="PPO epochs over each batch.")
    clip: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    value_clip: float = Field(0.2, gt=0, description="Value clip range.")
    value_coef: float = Field(0.1, ge=0, description="Weight of the value loss (TRL: 0.1).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(True, description="Whiten advantages over the batch.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    offpolicy_is_cap: float = Field(
        2.0, gt=0, le=1e6, description="Stale rollouts (runtime.pipeline; staleness >= 1): each token's policy loss is weighted by "
        "min(pi_old / mu, cap), pi_old the learner's policy before this iteration's updates and mu the policy that sampled the token "
        "(truncated importance sampling; the peers' cap is 2). Fresh rollouts are not reweighted.")
    advantage: AdvantageEstimator = Field(
        "gae", description="gae: a value network and GAE (PPO). Critic-free, no value network built, trained, synced or checkpointed: "
        "grpo (group mean and std; Shao et al. 2024), dr_grpo (group mean only; Liu et al. 2025, with loss_agg "
        "seq-mean-token-sum-norm), rloo (leave-one-out mean; Ahmadian et al. 2024), reinforce_pp (discounted returns of the "
        "KL-shaped token rewards, whitened over the batch; Hu 2025), reinforce_pp_baseline (score minus its group mean, whitened). "
        "The group estimators need generation.n_per_prompt >= 2. Sequence scores include -beta * KL with kl.placement: reward.")
    clip_high: float | None = Field(None, gt=0, le=10, description="The ratio's upper clip: [1 - clip, 1 + clip_high] (DAPO's "
                                    "clip-higher, 0.28 with clip 0.2). None = clip (symmetric, PPO).")
    ratio_level: Literal["token", "sequence"] = Field(
        "token", description="token: the importance ratio per token (PPO, GRPO); sequence: GSPO's per-sequence geometric mean "
        "exp(mean_t log pi/pi_old), clipped per sequence (Zheng et al. 2025; clip ranges there are ~3e-4 / 4e-4).")
    loss_agg: LossAggregation = Field(
        "token-mean", description="How per-token losses become one: token-mean (PPO, DAPO); seq-mean-token-mean (GRPO's original "
        "length normalisation); seq-mean-token-sum; seq-mean-token-sum-norm (token sums over a constant, "
        "generation.max_new_tokens: Dr. GRPO). The KL term in the loss is aggregated the same way.")
    drop_uniform_groups: bool = Field(
        False, description="DAPO's dynamic sampling, without the refill: groups whose proxy scores are all equal (zero advantage "
        "under every group estimator) are left out of the loss; the count is logged (rollout/groups_dropped). Needs "
        "generation.n_per_prompt >= 2. DAPO resamples until the batch is full; tether trains on the smaller batch.")
    value_model: Literal["separate", "shared"] = Field(
        "separate", description="separate: the value head on its own copy of the transformer (the Elastic Reset authors' RL4LMs "
        "actor-critic, TRL's PPOTrainer), so a reset of the policy does not move the value function; shared: the head on the "
        "policy's last hidden state (one forward pass, cheaper; a reset then changes the critic's features).")

    @model_validator(mode="after")
    def _mb(self) -> "PPOConfig":
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.minibatch_size ({self.minibatch_size})")
        critic = sorted(self.model_fields_set & {"value_model", "value_coef", "value_clip", "lam", "whiten_advantages"})
        if self.advantage != "gae" and critic:
            raise ValueError(f"ppo.{', ppo.'.join(critic)} configure{'s' if len(critic) == 1 else ''} GAE's value network, which "
                             f"ppo.advantage {self.advantage!r} does not build; remove {'it' if len(critic) == 1 else 'them'} or use ppo.advantage: gae")
        return self


class FDPGConfig(Strict):
    """f-DPG (Go et al. 2023): minimise D_f(pi || p) towards a target p; docs/methods.md s.5."""

    divergence: Divergence = Field("js", description="The f-divergence (Go et al.: JS is a good default and often beats forward KL).")
    target: Literal["rlhf", "gdc"] = Field(
        "rlhf", description="rlhf: p ~ pi_0 exp(r / beta) with r the proxy-ensemble aggregate. gdc: p ~ pi_0 * 1[proxy aggregate >= threshold], "
        "a declared constraint of the proxy ensemble's own; the gold stays held out (it only grades, as for every method).",
    )
    beta: float | None = Field(None, gt=0, description="Temperature of the RLHF target (only target=rlhf; default 1.0).")
    threshold: float | None = Field(None, description="GDC constraint: the proxy aggregate at least this (only target=gdc; default: "
                                    "calibrated, see constraint_quantile).")
    constraint_quantile: float | None = Field(None, gt=0, lt=1, description="GDC without a threshold: the threshold is this quantile of "
                                              "the proxy aggregate of the first batch (pi_0's samples), then fixed (only target=gdc; default "
                                              "0.5: p is pi_0 restricted to what the proxies rate above its median).")
    proposal: Literal["current", "lagged"] = Field("current", description="Sample from the current policy, or from a lagged copy updated every lag_every iterations (then rollouts come from the copy).")
    lag_every: int | None = Field(None, ge=1, description="Iterations between proposal updates (only proposal=lagged; default 4).")
    lr: float = Field(5e-5, gt=0, description="Adam learning rate.")
    batch_size: int = Field(64, ge=1, description="Samples per iteration.")
    minibatch_size: int = Field(16, ge=1, description="Samples per gradient step (one pass over the batch per iteration).")
    baseline_momentum: float = Field(0.9, ge=0, lt=1, description="Moving-average baseline b of the pseudo-reward -f'(t).")
    z_momentum: float | None = Field(None, ge=0, lt=1, description="None: Z = mean importance weight over every sample so far (DPG/GDC); a float: EMA of batch means.")
    clip_weight: float | None = Field(None, gt=0, description="Cap on the importance weight pi/q (None = no cap).")
    samples_per_prompt: int = Field(
        4, ge=1,
        description="Samples drawn per prompt; Z is estimated per prompt from them, as naver/disco keeps one estimate per context "
        "(a prompt none of whose samples meets the GDC constraint falls back to the running Z). 1 = one sample per prompt and a single running Z.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")

    @model_validator(mode="after")
    def _applies(self) -> "FDPGConfig":
        if self.target != "rlhf" and self.beta is not None:
            raise ValueError(f"fdpg.beta applies only to target 'rlhf', not '{self.target}'; remove it or set target: rlhf")
        for name in ("threshold", "constraint_quantile"):
            if self.target != "gdc" and getattr(self, name) is not None:
                raise ValueError(f"fdpg.{name} applies only to target 'gdc', not '{self.target}'; remove it or set target: gdc")
        if self.threshold is not None and self.constraint_quantile is not None:
            raise ValueError("fdpg.threshold and fdpg.constraint_quantile are two ways to set one threshold; give one")
        if self.proposal != "lagged" and self.lag_every is not None:
            raise ValueError(f"fdpg.lag_every applies only to proposal 'lagged', not '{self.proposal}'; remove it or set proposal: lagged")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"fdpg.batch_size ({self.batch_size}) must be a multiple of fdpg.minibatch_size ({self.minibatch_size})")
        if self.batch_size % self.samples_per_prompt:
            raise ValueError(f"fdpg.batch_size ({self.batch_size}) must be a multiple of fdpg.samples_per_prompt ({self.samples_per_prompt})")
        return self

    @property
    def beta_(self) -> float:
        return 1.0 if self.beta is None else self.beta

    @property
    def constraint_quantile_(self) -> float:
        return 0.5 if self.constraint_quantile is None else self.constraint_quantile

    @property
    def lag_every_(self) -> int:
        return 4 if self.lag_every is None else self.lag_every


class QuarkConfig(Strict):
    """Quark (Lu et al. 2022): quantised reward tokens over a data pool; docs/methods.md s.6."""

    k: int = Field(5, ge=2, le=64, description="Reward quantiles / reward tokens (paper: 5).")
    kl_coef: float = Field(0.05, ge=0, description="beta: weight of the exact per-token KL to the reference (paper: 0.05).")
    entropy_coef: float = Field(0.06, ge=0, description="alpha: entropy bonus weight (paper: 0.06).")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (paper: 1e-5 for GPT-2 large; the small local policy needs more).")
    batch_size: int = Field(64, ge=1, description="New samples added to the pool per iteration.")
    minibatch_size: int = Field(16, ge=1, description="Pool samples per gradient step.")
    steps_per_iteration: int = Field(8, ge=1, description="Gradient steps on pool samples per iteration.")
    pool_size: int | None = Field(None, ge=1, description="Keep only the newest N pool samples (None = every sample so far, as in the paper).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")


class ReferenceConfig(Strict):
    """The model the policy starts from and is kept close to; SALSA (Chegini et al. 2024) uses a weight soup of SFT models."""

    kind: Literal["initial", "sft", "soup"] = Field(
        "initial",
        description="initial: start from and regularise towards pi_0. sft: start from and regularise towards SFT model start_from (SALSA's baseline). "
        "soup: start from SFT model start_from, regularise towards the weight soup of the SFT models (SALSA).",
    )
    n_sft: int | None = Field(None, ge=2, le=16, description="SFT models trained from pi_0 by `tether prepare` (only kind sft/soup; default 2).")
    weights: list[float] | None = Field(None, description="Soup weights, one per SFT model, summing to 1 (only kind soup; default uniform = SALSA's alpha 0.5).")
    start_from: int | None = Field(None, ge=0, description="Index of the SFT model the policy starts from (only kind sft/soup; default 0).")
    sft_tokens: int | None = Field(None, ge=1000, description="Fine-tuning tokens per SFT model (only kind sft/soup; default 300k).")
    sft_lr: float | None = Field(None, gt=0, description="Peak learning rate of SFT (only kind sft/soup; default 3e-4).")

    @model_validator(mode="after")
    def _applies(self) -> "ReferenceConfig":
        if self.kind == "initial":
            given = [f for f in ("n_sft", "weights", "start_from", "sft_tokens", "sft_lr") if getattr(self, f) is not None]
            if given:
                raise ValueError(f"reference.{', reference.'.join(given)} {'applies' if len(given) == 1 else 'apply'} only to kind 'sft' or 'soup', not 'initial'")
        if self.kind != "soup" and self.weights is not None:
            raise ValueError(f"reference.weights applies only to kind 'soup', not '{self.kind}'")
        n = self.n_sft_
        if self.weights is not None:
            if len(self.weights) != n:
                raise ValueError(f"reference.weights has {len(self.weights)} entries; need one per SFT model (n_sft = {n})")
            if any(w < 0 for w in self.weights) or abs(sum(self.weights) - 1) > 1e-6:
                raise ValueError(f"reference.weights must be non-negative and sum to 1, got {self.weights}")
        if self.start_from is not None and self.start_from >= n:
            raise ValueError(f"reference.start_from ({self.start_from}) must be < n_sft ({n})")
        return self

    @property
    def n_sft_(self) -> int:
        return 2 if self.n_sft is None else self.n_sft

    @property
    def start_(self) -> int:
        return 0 if self.start_from is None else self.start_from

    @property
    def weights_(self) -> list[float]:
        return self.weights if self.weights is not None else [1.0 / self.n_sft_] * self.n_sft_

    @property
    def sft_tokens_(self) -> int:
        return 300_000 if self.sft_tokens is None else self.sft_tokens

    @property
    def sft_lr_(self) -> float:
        return 3e-4 if self.sft_lr is None else self.sft_lr
