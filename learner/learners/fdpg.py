"""The f-DPG learner (Go et al. 2023): distribution matching towards an RLHF or GDC target.

One iteration: the batch was sampled from the proposal q (the current policy, or a lagged copy that
the rollout engines then hold); log pi_0 (the reference: pi_0 or a SALSA soup), log q and the target
log p~ are computed; Z and the baseline are updated; then one pass of minibatch steps on the f-DPG
surrogate (learner.methods.fdpg). The maths is in learner/methods/fdpg.py; this class only wires it to models.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch

from learner.config import TetherConfig
from learner.methods.fdpg import MovingBaseline, RunningLogZ, fdpg_loss, log_target, per_prompt_log_z, pseudo_reward
from learner.learners.base import LearnerBase
from learner.methods.logprobs import masked_sum
from learner.models.policy import make_adam, optimizer_step, response_logprobs
from learner.types import ScoredRollouts


class FDPGLearner(LearnerBase):
    algorithm = "fdpg"

    def __init__(self, cfg: TetherConfig, init_lm: torch.nn.Module, *, pad_id: int, ref_lm: torch.nn.Module | None = None):
        super().__init__(cfg, init_lm, pad_id=pad_id, ref_lm=ref_lm)
        c = cfg.fdpg
        self.model = init_lm.train()
        self.proposal = copy.deepcopy(init_lm).eval().requires_grad_(False) if c.proposal == "lagged" else None
        self.opt = make_adam(self.model.parameters(), c.lr, self.device)
        self.log_z = RunningLogZ(c.z_momentum)
        self.baseline = MovingBaseline(c.baseline_momentum)
        self.gdc_threshold: float | None = None  # the GDC constraint's threshold on the proxy aggregate, once fixed
        # self.version counts the sampling weights' versions (the proposal's, when lagged)

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        src = self.proposal if self.proposal is not None else self.model
        return {k: v.detach() for k, v in src.state_dict().items()}

    @torch.no_grad()
    def _seq_logp(self, model, batch, mask) -> torch.Tensor:
        """(B,) log-probability of each whole response; in a learner group each rank scores its rows, then gathers."""
        if not self.dp.active:
            return masked_sum(response_logprobs(model, batch), mask, dim=1)
        rows = torch.as_tensor(self.dp.shard(np.arange(mask.shape[0])), device=self.device)
        part = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        return self.dp.gather_rows(masked_sum(response_logprobs(model, part), part["response_mask"], dim=1))

    def step(self, scored: ScoredRollouts) -> dict[str, float]:
        c, t0 = self.cfg.fdpg, time.time()
        r = scored.rollouts
        batch = self.batch(r.prompt_ids, r.response_ids)
        mask = batch["response_mask"]
        B = mask.shape[0]
        self.model.eval()
        ref_lp = self._seq_logp(self.ref, batch, mask)  # (B,) log pi_0(x)
        q_lp = self._seq_logp(self.proposal if self.proposal is not None else self.model, batch, mask)  # (B,) log q(x)
        if c.target == "rlhf":
            log_pt = log_target(init_logp_seq=ref_lp, reward=self.tensor(scored.reward), beta=c.beta_)
            sat = float("nan")
        else:
            # a constraint of the proxy ensemble's own (the gold is held out for evaluation, as for every method)
            agg = self.tensor(scored.reward)
            if self.gdc_threshold is None:  # declared, or calibrated once on the first batch (pi_0's samples) and fixed
                self.gdc_threshold = c.threshold if c.threshold is not None else float(torch.quantile(agg.double(), c.constraint_quantile_))
            ok = agg >= self.gdc_threshold
            log_pt = log_target(init_logp_seq=ref_lp, constraint=ok)
            sat = float(ok.float().mean())
        log_z = self.log_z.update(log_pt, q_lp)  # the running Z over every sample (logged; the fallback of per-prompt Z)
        out: dict[str, float] = {"fdpg/log_z": log_z, "fdpg/constraint_rate": sat}
        z_rows: float | torch.Tensor = log_z
        if c.samples_per_prompt > 1 and math.isfinite(log_z):
            # Z_c per prompt from its samples (naver/disco: one estimate per context); a prompt whose samples all fail the
            # GDC constraint has no estimate (Z_c = 0, disco skips it): its rows keep the running Z, so they are still
            # pushed down (p(x) = 0 for each of them).
            ids: dict[str, int] = {}
            groups = torch.as_tensor([ids.setdefault(p, len(ids)) for p in r.prompts], device=self.device)
            zc = per_prompt_log_z(log_pt, q_lp, groups)
            fin = torch.isfinite(zc)
            out["fdpg/prompts"] = float(len(ids))
            out["fdpg/prompts_without_z"] = float(len(ids) - len(torch.unique(groups[fin]))) if fin.any() else float(len(ids))
            out["fdpg/log_z_prompt_mean"] = float(zc[fin].mean()) if fin.any() else float("nan")
            z_rows = torch.where(fin, zc, torch.full_like(zc, log_z))
        if self.gdc_threshold is not None:
            out["fdpg/constraint_threshold"] = self.gdc_threshold
        stats: dict[str, list[float]] = {"loss/policy": [], "fdpg/pseudo_reward_mean": [], "fdpg/log_t_mean": [], "fdpg/weight_mean": [],
                                         "optim/grad_norm": []}
        if math.isfinite(log_z):
            pi_lp = self._seq_logp(self.model, batch, mask) if self.proposal is not None else q_lp
            pr, _ = pseudo_reward(policy_logp_seq=pi_lp, log_ptilde=log_pt, log_z=z_rows, divergence=c.divergence)
            b = self.baseline.update(pr)  # moving average including this batch
            self.model.train()
            rng = self.minibatch_rng()
            dp = self.dp
            for idx in np.split(rng.permutation(B), B // c.minibatch_size):
                it = torch.as_tensor(dp.shard(idx), device=self.device)  # this rank's rows of the minibatch
                mb = {k: (v[it] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                lp = masked_sum(response_logprobs(self.model, mb), mb["response_mask"], dim=1)  # (b,) with grad
                loss, st = fdpg_loss(policy_logp_seq=lp, proposal_logp_seq=q_lp[it], log_ptilde=log_pt[it],
                                     log_z=z_rows[it] if isinstance(z_rows, torch.Tensor) else z_rows, baseline=b,
                                     divergence=c.divergence, clip_weight=c.clip_weight)
                share = dp.share(len(it))  # the loss is a mean over the minibatch's sequences
                gn = optimizer_step(self.opt, loss * share if dp.active else loss, self.model.parameters(), c.max_grad_norm,
                                    reduce_grads=dp.reduce_grads)
                for k, v in dp.weighted_sum({"loss/policy": loss.item(), **st}, share).items():
                    stats[k].append(v)
                stats["optim/grad_norm"].append(gn)
            out["fdpg/baseline"] = b
            # Importance-sampled divergences to the target (samples from q): KL(pi||p) = E_q[pi/q (log pi - log p)].
            log_p = log_pt - (z_rows.float() if isinstance(z_rows, torch.Tensor) else z_rows)
            w = torch.exp(pi_lp - q_lp)
            finite = torch.isfinite(log_p)
            out["fdpg/kl_pi_p"] = float((w * (pi_lp - log_p))[finite].mean()) if finite.all() else float("inf")
            wp = torch.exp(torch.where(finite, log_p - q_lp, torch.full_like(log_p, -math.inf)))
            out["fdpg/kl_p_pi"] = float((wp * torch.where(finite, log_p - pi_lp, torch.zeros_like(log_p))).mean())
        out.update({k: float(np.mean(v)) if v else float("nan") for k, v in stats.items()})
        self.iteration += 1
        if self.proposal is None:
            self.version += 1
        elif self.iteration % c.lag_every_ == 0:
            self.proposal.load_state_dict(self.model.state_dict())
            self.version += 1
            out["fdpg/proposal_updated"] = 1.0
        out.update({
            "kl/to_ref": float((q_lp - ref_lp).mean()),  # k1 estimate on the proposal's samples
            "reward/train_aggregate": float(np.mean(scored.reward)),
            "policy/version": float(self.version),
            "time_s/learn": time.time() - t0,
        })
        return out

    def extra_state(self) -> dict:
        return {"proposal": self.proposal.state_dict() if self.proposal is not None else None, "log_z": self.log_z.state_dict(),
                "baseline": self.baseline.state_dict(), "gdc_threshold": self.gdc_threshold}

    def load_extra_state(self, sd: dict) -> None:
        if self.proposal is not None and sd.get("proposal") is not None:
            self.proposal.load_state_dict(sd["proposal"])
        self.log_z.load_state_dict(sd["log_z"])
        self.baseline.load_state_dict(sd["baseline"])
        self.gdc_threshold = sd.get("gdc_threshold")
