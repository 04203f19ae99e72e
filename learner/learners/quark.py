"""The Quark learner (Lu et al. 2022): reward-quantile tokens over a data pool of every sample so far.

The policy's vocabulary gets K reward tokens (``expand_policy``); the rollout engines load that
expanded folder. Iteration 0 samples come from the reference (no reward token, docs/methods.md s.6); later
samples are conditioned on the best token. Each iteration adds the batch to the pool, re-quantises
the pool, and takes ``steps_per_iteration`` gradient steps on random pool samples, each conditioned on
its own quantile's token, with the loss of learner.methods.quark.quark_loss (the reference sees no token).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from learner.config import TetherConfig
from learner.learners.base import QUARK_META, LearnerBase, NotApplicable
from learner.models.policy import make_adam, optimizer_step, response_logprobs
from learner.methods.quark import DataPool, condition, quark_loss, quantile_tokens, reward_token_strings
from learner.types import ScoredRollouts


def expand_policy(base: str | Path, out_dir: Path, k: int) -> list[int]:
    """Write base + K reward tokens to out_dir (model, tokenizer, tether_quark.json); returns their ids, lowest first.

    New embedding rows are the mean of the existing rows (deterministic, so a resumed run rebuilds the
    same folder). The embeddings are tied, so that row is also the output row: its logit is about the
    mean logit, and measured on pi_0 a reward token is sampled with probability ~6e-6 per step.
    Reuses out_dir when it already holds this expansion.
    """
    from transformers import AutoTokenizer

    from learner.models.policy import load_policy

    out_dir = Path(out_dir)
    meta_path = out_dir / QUARK_META
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("base") == str(base) and meta.get("k") == k:
            return meta["reward_token_ids"]
    tok = AutoTokenizer.from_pretrained(str(base))
    model = load_policy(base)
    old = model.get_input_embeddings().weight.shape[0]
    strings = reward_token_strings(k)
    tok.add_special_tokens({"additional_special_tokens": strings})
    ids = tok.convert_tokens_to_ids(strings)
    if ids != list(range(len(tok) - k, len(tok))) or len(tok) - k != old:
        raise ValueError(f"{base}: tokenizer ({len(tok) - k} tokens) and embeddings ({old} rows) disagree; cannot add reward tokens")
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(0, keepdim=True)
        out = model.get_output_embeddings().weight
        if out.data_ptr() != emb.data_ptr():
            out[old:] = out[:old].mean(0, keepdim=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / QUARK_META).write_text(json.dumps({"base": str(base), "k": k, "reward_token_ids": ids, "strings": strings}))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return ids


class QuarkLearner(LearnerBase):
    algorithm = "quark"

    def __init__(self, cfg: TetherConfig, init_lm: torch.nn.Module, *, pad_id: int, ref_lm: torch.nn.Module | None = None,
                 reward_token_ids: list[int]):
        q = cfg.quark
        if len(reward_token_ids) != q.k:
            raise ValueError(f"the policy has {len(reward_token_ids)} reward tokens but quark.k is {q.k}; rebuild its folder")
        super().__init__(cfg, init_lm, pad_id=pad_id, ref_lm=ref_lm)
        self.token_ids = list(reward_token_ids)
        self.model = init_lm.train()
        self.opt = make_adam(self.model.parameters(), q.lr, self.device)
        self.pool = DataPool(q.pool_size)

    @classmethod
    def build(cls, cfg: TetherConfig, init_lm: torch.nn.Module, *, pad_id: int, ref_lm: torch.nn.Module, policy_path: Path) -> "QuarkLearner":
        meta_path = Path(policy_path) / QUARK_META
        if not meta_path.exists():
            raise NotApplicable(f"{policy_path} has no reward tokens ({QUARK_META}); Quark runs start from learner.learners.quark.expand_policy's folder")
        meta = json.loads(meta_path.read_text())
        return cls(cfg, init_lm, pad_id=pad_id, ref_lm=ref_lm, reward_token_ids=meta["reward_token_ids"])

    @classmethod
    def prepare_policy(cls, cfg: TetherConfig, policy_path: Path, run_dir: Path) -> tuple[Path, list[int]]:
        """The policy gains K reward tokens (a folder in the run): every role loads that folder."""
        ids = expand_policy(policy_path, Path(run_dir) / "quark-policy", cfg.quark.k)
        return Path(run_dir) / "quark-policy", ids

    @classmethod
    def sampling_prefix(cls, control_ids: list[int], iteration: int) -> list[int] | None:
        """Sampling is conditioned on the best reward token, except at step 0 (samples from the reference)."""
        return [control_ids[-1]] if control_ids and iteration > 0 else None

    @property
    def best_token(self) -> int:
        return self.token_ids[-1]

    def step(self, scored: ScoredRollouts) -> dict[str, float]:
        q, t0 = self.cfg.quark, time.time()
        r = scored.rollouts
        self.pool.add(r.plain_prompt_ids, r.response_ids, scored.reward)
        samples = self.pool.assign(q.k)
        rewards = np.asarray(self.pool.rewards)
        bins = quantile_tokens(rewards, q.k)
        rng = self.minibatch_rng()
        stats: dict[str, list[float]] = {"loss/policy": [], "loss/nll": [], "loss/kl": [], "loss/entropy": [], "optim/grad_norm": [], "kl/to_ref_exact": []}
        self.model.train()
        for _ in range(q.steps_per_iteration):
            idx = rng.choice(len(samples), size=q.minibatch_size, replace=len(samples) < q.minibatch_size)
            pick = [samples[i] for i in self.dp.shard(idx)]  # this rank's rows of the minibatch (all of it on one rank)
            cond = self.batch([condition(s.prompt, self.token_ids[s.quantile]) for s in pick], [s.response for s in pick])
            plain = self.batch([s.prompt for s in pick], [s.response for s in pick])
            mask = cond["response_mask"]
            P, R = cond["prompt_width"], mask.shape[1]
            _, logits = response_logprobs(self.model, cond, return_logits=True)  # (b, R), (b, R, V)
            with torch.no_grad():
                _, ref_logits = response_logprobs(self.ref, plain, return_logits=True)
            loss, st = quark_loss(logits=logits, ref_logits=ref_logits, tokens=cond["input_ids"][:, P : P + R], mask=mask,
                                  kl_coef=q.kl_coef, entropy_coef=q.entropy_coef, n_base=min(self.token_ids))  # reward tokens come last
            dp = self.dp
            share = dp.share(mask.sum())  # every term is a mean over the minibatch's response tokens
            gn = optimizer_step(self.opt, loss * share if dp.active else loss, self.model.parameters(), q.max_grad_norm,
                                reduce_grads=dp.reduce_grads)
            st = dp.weighted_sum({"loss/policy": loss.item(), **st}, share)  # loss/policy: NLL + beta KL - alpha entropy
            mean_len = dp.weighted_sum({"len": float(mask.sum(1).float().mean())}, dp.share(len(pick)))["len"]
            stats["optim/grad_norm"].append(gn)
            stats["kl/to_ref_exact"].append(st["loss/kl"] * mean_len)  # per-token mean x mean length ~ per sequence
            for k, v in st.items():
                stats[k].append(v)
        self.iteration += 1
        self.version += 1
        out = {k: float(np.mean(v)) for k, v in stats.items()}
        edges = [float(rewards[bins == b].min()) for b in range(1, q.k) if np.any(bins == b)]
        out.update({
            "quark/pool_size": float(len(self.pool)),
            "quark/best_quantile_min_reward": edges[-1] if edges else float("nan"),
            "quark/pool_reward_mean": float(rewards.mean()),
            "reward/train_aggregate": float(np.mean(scored.reward)),
            "policy/version": float(self.version),
            "time_s/learn": time.time() - t0,
        })
        return out

    def extra_state(self) -> dict:
        return {"pool": self.pool.state_dict()}

    def load_extra_state(self, sd: dict) -> None:
        self.pool.load_state_dict(sd["pool"])
