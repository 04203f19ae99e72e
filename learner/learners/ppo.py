"""The learner: PPO with KL control (Ziegler et al.) and optional Elastic Reset (Noukhovitch et al.), and the
critic-free family on the same loop (issue 26): GRPO, Dr. GRPO, RLOO, REINFORCE++ (``ppo.advantage``), the KL in the
reward or in the loss, GSPO's sequence ratio, clip-higher, the loss aggregations and DAPO's filter of uniform groups.

`PPOLearner.step(scored) -> stats` runs one iteration on a batch of scored rollouts. It knows nothing of Ray: the
runtime calls it in-process or inside a thin actor shell. A critic-free estimator builds no value network, so none is
trained, synced or checkpointed; everything else (Elastic Reset, pipelining's correction, learner groups) is shared.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from learner.config import TetherConfig
from learner.learners.base import LearnerBase, NotApplicable
from learner.methods.elastic_reset import ElasticReset
from learner.methods.kl import exact_kl_from_logits, kl_estimate, make_kl_controller
from learner.methods.logprobs import entropy_from_logits, masked_mean, masked_sum, masked_whiten
from learner.models.policy import SPEEDUPS, PolicyWithValue, make_adam, optimizer_step, response_logprobs, trim_padding
from learner.methods.advantages import (aggregate_loss, grpo_advantages, informative_groups,
                                        reinforce_pp_advantages, reinforce_pp_baseline_advantages, rloo_advantages)
from learner.methods.ppo import gae, per_token_rewards, policy_loss, truncated_is_weights, value_loss
from learner.types import ScoredRollouts

log = logging.getLogger(__name__)


class PPOLearner(LearnerBase):
    algorithm = "ppo"

    @classmethod
    def resets_elastically(cls, cfg: TetherConfig) -> bool:
        return cfg.elastic_reset.enabled

    def __init__(self, cfg: TetherConfig, init_lm: torch.nn.Module, *, pad_id: int, ref_lm: torch.nn.Module | None = None):
        self.lora = cfg.policy.lora is not None
        if self.lora:  # adapters on pi_0; the reference is the same model with them off (unless a SALSA soup was given)
            from learner.models.lora import AdaptersOff, wrap

            torch.manual_seed(cfg.train.seed)  # peft draws A at random: the seed's, so every rank (and a rerun) holds the same adapters
            init_lm = wrap(init_lm, cfg.policy.lora)
            ref_lm = AdaptersOff(init_lm) if ref_lm is None else ref_lm
        super().__init__(cfg, init_lm, pad_id=pad_id, ref_lm=ref_lm)  # self.ref: pi_0, a SALSA soup, or (kl.reference: ema) the EMA
        # the value head (and a separate critic) are made on the CPU: move them to the policy's device
        self.critic = cfg.ppo.advantage == "gae"  # the other estimators need no value network: none is built
        self.model = PolicyWithValue(init_lm, separate_critic=cfg.ppo.value_model == "separate", value=self.critic).to(self.device)
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]  # every weight, or (policy.lora) adapters + value net
        self.opt = make_adam(self.trainable, cfg.ppo.lr, self.device)
        k = cfg.kl
        self.kl_ctl = make_kl_controller(mode=k.mode, coef=k.coef, target=k.target, horizon=k.horizon)
        self.elastic = self._make_elastic()
        if cfg.kl.reference == "ema" and self.elastic is None:
            raise ValueError("kl.reference 'ema' needs elastic_reset.enabled: true (there is no EMA otherwise); use kl.reference: initial")

    def _make_elastic(self) -> ElasticReset | None:
        er = self.cfg.elastic_reset
        if not er.enabled:
            return None
        # the value function (head, and the separate critic) is neither averaged nor reset, as in the authors' code
        exclude = (lambda n: False) if er.include_value_head else (lambda n: n.startswith(("value_head", "critic.")))
        trains = {n for n, p in self.model.named_parameters() if p.requires_grad}
        # with policy.lora the EMA and the resets act on the adapters: the frozen base never moves
        return ElasticReset(self.model, eta=er.eta, exclude=lambda n: exclude(n) or n not in trains, frozen=lambda n: n not in trains)

    def shard(self) -> None:
        """runtime.learner.sharding fsdp2, once the learner group exists (actors/workers.py: LearnerWorker.join_group), before
        the first step: the policy-with-value and the reference sharded over the group, then what holds their parameters (the
        optimiser, Elastic Reset's EMA and theta_0) made again over the shards."""
        from learner.models.device import resolve_precision
        from learner.models.lora import AdaptersOff
        from learner.parallel import shard_fsdp2

        if self.iteration or self.sharded:
            raise RuntimeError("shard() runs once, before the first step")
        bf16 = resolve_precision(self.cfg.runtime.learner.precision, self.device) == "bf16"
        self.n_blocks = shard_fsdp2(self.model, bf16=bf16)
        if not isinstance(self.ref, AdaptersOff):
            shard_fsdp2(self.ref, bf16=bf16)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_adam(self.trainable, self.cfg.ppo.lr, self.device, sharded=True)
        self.elastic = self._make_elastic()
        self._sharded = True

    # -- weights ---------------------------------------------------------------------------------
    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """The causal LM's weights (no value head), as the rollout engines expect them; with policy.lora the base weights with
        the adapters merged in (the model itself is unchanged)."""
        if self.lora:
            from learner.models.lora import merged_state_dict

            return merged_state_dict(self.model.lm)
        return {k: v.detach() for k, v in self.model.lm.state_dict().items()}

    def _ref_for_kl(self) -> torch.nn.Module:
        if self.cfg.kl.reference == "ema":
            ema = self.elastic.ema_state_dict()
            sd = {k[len("lm."):]: v for k, v in ema.items() if k.startswith("lm.")}
            self.ref.load_state_dict(sd, strict=False)
        return self.ref

    # -- one PPO iteration -----------------------------------------------------------------------
    def step(self, scored: ScoredRollouts) -> dict[str, float]:
        c = self.cfg.ppo
        t0 = time.time()
        r = scored.rollouts
        stale = self.version - r.policy_version
        batch = self.batch(r.prompt_ids, r.response_ids)
        mask = batch["response_mask"]  # (B, R)
        B = mask.shape[0]
        scores = self.tensor(scored.reward)  # (B,)
        dp = self.dp
        with torch.no_grad():
            self.model.eval()
            # in a learner group each rank runs these forward passes on its rows and gathers the rest (learner/parallel.py)
            rows = torch.as_tensor(dp.shard(np.arange(B)), device=self.device)
            part = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()} if dp.active else batch
            if self.critic:
                old_logp, old_values, logits = response_logprobs(self.model, part, with_values=True, return_logits=True)
            else:
                (old_logp, logits), old_values = response_logprobs(self.model, part, return_logits=True), None
            ref = self._ref_for_kl()
            ref_logp, ref_logits = response_logprobs(ref, part, return_logits=True)
            exact_kl = masked_sum(exact_kl_from_logits(logits, ref_logits), part["response_mask"], dim=1)  # (B,)
            del logits, ref_logits
            old_logp, ref_logp, exact_kl = (dp.gather_rows(x) for x in (old_logp, ref_logp, exact_kl))
            if self.critic:
                old_values = dp.gather_rows(old_values)
            kl_tok = kl_estimate(old_logp, ref_logp, self.cfg.kl.estimator)  # (B, R)
            beta = self.kl_ctl.value
            in_reward = self.cfg.kl.placement == "reward"
            rewards = per_token_rewards(scores=scores, kl=kl_tok, mask=mask, beta=beta if in_reward else 0.0)
            adv, returns, keep, gstats = self._advantages(scored, scores, rewards, kl_tok, old_values, mask, beta if in_reward else 0.0)
            beh = self.tensor([x + [0.0] * (mask.shape[1] - len(x)) for x in r.behaviour_logprobs])
            behaviour_gap = masked_mean((beh - old_logp).abs(), mask)
            # stale rollouts (runtime.pipeline): weight each token by min(pi_old / mu, cap); fresh ones are not reweighted
            is_w, is_stats = (truncated_is_weights(old_logp=old_logp, behaviour_logp=beh, mask=mask, cap=c.offpolicy_is_cap) if stale > 0
                              else (None, {"is_weight_mean": 1.0, "is_clipfrac": 0.0}))
        self.model.train()
        names = ["loss/policy", "loss/entropy", "ppo/clipfrac", "ppo/approx_kl", "optim/grad_norm"]
        names += ["loss/value", "ppo/vf_clipfrac"] if self.critic else []
        names += [] if in_reward else ["loss/kl"]
        stats: dict[str, list[float]] = {k: [] for k in names}
        rng = self.minibatch_rng()
        by_rows = c.loss_agg != "token-mean"  # a mean over sequences: each rank's share of the minibatch is its share of rows
        for _ in range(c.epochs if bool(keep.any()) else 0):  # every group dropped: nothing to learn from
            for idx in np.split(rng.permutation(B), B // c.minibatch_size):
                idx_t = torch.as_tensor(dp.shard(idx), device=self.device)  # this rank's rows of the minibatch
                mb = trim_padding({k: (v[idx_t] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
                m = mb["response_mask"]
                m_loss = m * keep[idx_t, None].to(m.dtype)  # DAPO's filter: a dropped group's rows are not in the loss
                if self.critic:
                    logp, values, mb_logits = response_logprobs(self.model, mb, with_values=True, return_logits=True)
                else:
                    logp, mb_logits = response_logprobs(self.model, mb, return_logits=True)
                pl, pst = policy_loss(logp=logp, old_logp=old_logp[idx_t], advantages=adv[idx_t], mask=m_loss, clip=c.clip,
                                      weights=None if is_w is None else is_w[idx_t], clip_high=c.clip_high, level=c.ratio_level,
                                      agg=c.loss_agg, norm_len=self.cfg.generation.max_new_tokens)
                share = dp.share(m.sum())  # token-mean terms are means over the minibatch's response tokens
                if by_rows:
                    pshare = dp.share(float(keep[idx_t].sum()))
                else:  # without the filter every row is kept: the same tokens as `share` (no second all-reduce)
                    pshare = dp.share(m_loss.sum()) if c.drop_uniform_groups else share
                terms = [(pl, pshare)]
                mvals = {"loss/policy": pl.item(), "ppo/clipfrac": pst["clipfrac"], "ppo/approx_kl": pst["approx_kl"]}
                if self.critic:
                    vl, vst = value_loss(values=values, old_values=old_values[idx_t], returns=returns[idx_t], mask=m, clip=c.value_clip)
                    terms.append((c.value_coef * vl, share))
                    mvals.update({"loss/value": vl.item(), "ppo/vf_clipfrac": vst["vf_clipfrac"]})
                if not in_reward:  # the KL in the loss: beta * the aggregated per-token estimate, with its gradient
                    kl_loss = aggregate_loss(kl_estimate(logp, ref_logp[idx_t], self.cfg.kl.estimator), m_loss, c.loss_agg,
                                             norm_len=self.cfg.generation.max_new_tokens)
                    terms.append((beta * kl_loss, pshare))
                    mvals["loss/kl"] = kl_loss.item()
                if c.entropy_coef > 0 or not SPEEDUPS.entropy_without_grad:
                    ent = masked_mean(entropy_from_logits(mb_logits), m)
                    terms.append((-c.entropy_coef * ent, share))
                else:  # logged only: no graph through a (b, R, V) softmax that the loss does not use
                    with torch.no_grad():
                        ent = masked_mean(entropy_from_logits(mb_logits), m)
                mvals["loss/entropy"] = ent.item()
                # one rank's loss, each term weighted by this rank's share of what it averages over (the sum over ranks is the
                # minibatch's loss); on one rank the plain sum
                loss = sum(t * w for t, w in terms) if dp.active else sum(t for t, _ in terms)
                gn = optimizer_step(self.opt, loss, self.trainable, c.max_grad_norm, reduce_grads=dp.reduce_grads)
                if self.elastic is not None and self.cfg.elastic_reset.update == "step":
                    self.elastic.update(self.model)  # EMA after every optimiser step (an option; not the authors' cadence)
                mstats = dp.weighted_sum(mvals, share)
                for k, v in (*mstats.items(), ("optim/grad_norm", float(gn))):
                    stats[k].append(v)
            if self.elastic is not None and self.cfg.elastic_reset.update == "epoch":
                self.elastic.update(self.model)  # once per PPO epoch: the authors' StackLLaMA code
        if self.elastic is not None and self.cfg.elastic_reset.update == "iteration":
            # once per PPO iteration, after every epoch on this rollout batch: the authors' IMDB code (RL4LMs, branch
            # "paper", rl4lms/algorithms/ema/ema_ppo.py:176-180 -- EMAPPO.learn calls ema_update_ref_model after train())
            self.elastic.update(self.model)
        seq_kl = float(masked_sum(kl_tok, mask, dim=1).mean())
        self.kl_ctl.update(seq_kl, B)
        self.iteration += 1
        self.version += 1
        out = {k: float(np.mean(v)) for k, v in stats.items() if v}
        out.update(gstats)
        out.update({
            "kl/to_ref": seq_kl,
            "kl/to_ref_exact": float(exact_kl.mean()),
            "kl/coef": beta,
            "kl/coef_next": self.kl_ctl.value,
            "reward/train_aggregate": float(scores.mean()),
            "reward/train_total": float(masked_sum(rewards, mask, dim=1).mean()),
            "rollout/staleness": float(stale),
            "rollout/behaviour_logp_gap": float(behaviour_gap),
            "offpolicy/is_weight_mean": is_stats["is_weight_mean"],
            "offpolicy/is_clipfrac": is_stats["is_clipfrac"],
            "policy/version": float(self.version),
            "time_s/learn": time.time() - t0,
        })
        out["elastic_reset/event"] = 0.0
        if self.elastic is not None and self.iteration % self.cfg.elastic_reset.every == 0:
            self.reset_now()
            out["elastic_reset/event"] = 1.0
        if self.elastic is not None:
            out["elastic_reset/count"] = float(self.elastic.n_resets)
        return out

    def _advantages(self, scored: ScoredRollouts, scores, rewards, kl_tok, old_values, mask, beta_reward: float):
        """(advantages (B, R), GAE's returns or None, rows kept in the loss (B,) bool, stats) for ppo.advantage."""
        c, n = self.cfg.ppo, self.cfg.generation.n_per_prompt
        B = mask.shape[0]
        r = scored.rollouts
        # the prompt each row answers: set by the driver (consecutive rows of one prompt), else blocks of n_per_prompt
        groups = torch.as_tensor(r.groups if r.groups else [i // n for i in range(B)], dtype=torch.long, device=self.device)
        returns = None
        est = c.advantage
        # a sequence's score for the outcome estimators: the proxy aggregate, minus beta * its summed KL estimate when the KL
        # is in the reward (veRL sums the KL-shaped token rewards the same way)
        seq = scores.float() - beta_reward * masked_sum(kl_tok, mask, dim=1)
        if est == "gae":
            adv, returns = gae(rewards=rewards, values=old_values, mask=mask, gamma=c.gamma, lam=c.lam)
            if c.whiten_advantages:
                adv = masked_whiten(adv, mask)
        elif est in ("grpo", "dr_grpo", "rloo"):
            a = rloo_advantages(seq, groups) if est == "rloo" else grpo_advantages(seq, groups, scale_by_std=est == "grpo")
            adv = a[:, None].to(mask.device) * mask.float()
        elif est == "reinforce_pp":
            adv = reinforce_pp_advantages(rewards, mask, gamma=c.gamma)
        elif est == "reinforce_pp_baseline":
            adv = reinforce_pp_baseline_advantages(seq, groups, mask)
        else:  # the schema's Literal names every estimator: this is a programming error
            raise AssertionError(f"ppo.advantage {est!r} has no branch")
        out: dict[str, float] = {"advantage/mean": float(masked_mean(adv, mask)), "advantage/abs_mean": float(masked_mean(adv.abs(), mask))}
        keep = torch.ones(B, dtype=torch.bool, device=self.device)
        if n > 1:
            informative = informative_groups(scores.float(), groups)  # on the proxy scores, as DAPO on the accuracy
            n_groups = int(torch.unique(groups).numel())
            out["rollout/groups_uniform"] = float(n_groups - torch.unique(groups[informative]).numel())
            if c.drop_uniform_groups:
                keep = informative
                out["rollout/groups_dropped"] = out["rollout/groups_uniform"]
        return adv, returns, keep, out

    def reset_now(self) -> None:
        """Elastic Reset: policy <- EMA, then EMA <- initial (optionally optimiser and value head too)."""
        if self.elastic is None:
            raise NotApplicable("this run has no Elastic Reset (elastic_reset.enabled is false): there is no EMA to reset to")
        er = self.cfg.elastic_reset
        self.elastic.reset(self.model, optimizer=self.opt, reset_optimizer=er.reset_optimizer, reset_value_head=er.reset_value_head)
        self.version += 1  # the weights changed: rollouts must know
        log.info("elastic reset at iteration %d", self.iteration)

    # -- checkpoints -----------------------------------------------------------------------------
    def extra_state(self) -> dict:
        el = self.elastic.state_dict() if self.elastic is not None else None
        if el is not None and self.sharded:  # full tensors, as the model's (every rank gathers, in the same order)
            from learner.parallel import full

            el = {**el, "ema": {n: full(t).cpu() for n, t in el["ema"].items()}, "initial": {n: full(t).cpu() for n, t in el["initial"].items()}}
        return {"kl_ctl": self.kl_ctl.state_dict(), "elastic": el}

    def load_extra_state(self, sd: dict) -> None:
        self.kl_ctl.load_state_dict(sd["kl_ctl"])
        el = sd.get("elastic")
        if self.elastic is not None and el is not None:
            if self.sharded:  # each rank keeps its shard of the full tensors, placed as the parameter's
                from torch.distributed.tensor import distribute_tensor

                def local(mine, t):
                    return distribute_tensor(t.to(mine.dtype), mine.device_mesh, mine.placements)

                el = {**el, "ema": {n: local(self.elastic.ema[n], t) for n, t in el["ema"].items()},
                      "initial": {n: local(self.elastic.initial[n], t) for n, t in el["initial"].items()}}
            self.elastic.load_state_dict(el)
