"""Reward models trained by tether (Gao et al.'s synthetic setup, Coste et al.'s ensembles, or the user's own preference
pairs): a scalar-head sequence classifier started from the pretrained policy's truncated backbone or a named reward-model
backbone, trained with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected). Every task's proxy stage uses these."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from learner.config import TetherConfig
from learner.models.reward import RewardModel


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_c - r_r), mean over pairs. (P,) -> scalar."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def new_member(cfg: TetherConfig, policy_path, seed: int) -> RewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    src = cfg.proxy.name_or_path or str(policy_path)
    kw = {"num_labels": 1}
    if cfg.proxy.name_or_path is None and cfg.proxy.n_layer is not None:
        kw["num_hidden_layers"] = cfg.proxy.n_layer  # keep the first n_layer pretrained layers
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(src, dtype=torch.float32, **kw)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if cfg.proxy.name_or_path is None:
        model.config.tether_pooling = cfg.proxy.pooling
    return RewardModel(model, tok, cfg.proxy.max_len)


def train_member(rm: RewardModel, chosen: list[str], rejected: list[str], cfg: TetherConfig, seed: int, desc: str) -> list[float]:
    pc = cfg.proxy
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(rm.model.parameters(), lr=pc.lr, weight_decay=0.01)
    n = len(chosen)
    steps = pc.epochs * ((n + pc.batch_size - 1) // pc.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20)) * max(0.0, 1 - s / steps))
    rm.model.train()
    losses = []
    bar = tqdm(total=steps, desc=desc, unit="step", leave=False)
    for _ in range(pc.epochs):
        order = rng.permutation(n)
        for i in range(0, n, pc.batch_size):
            idx = order[i : i + pc.batch_size]
            r = rm.forward([chosen[j] for j in idx] + [rejected[j] for j in idx])
            loss = bradley_terry_loss(r[: len(idx)], r[len(idx) :])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
    bar.close()
    rm.model.eval()
    return losses


def pair_accuracy(rm: RewardModel, pairs: dict) -> float:
    ra, rb = rm.score(pairs["a"]).numpy(), rm.score(pairs["b"]).numpy()
    gold_pref = pairs["gold_a"] > pairs["gold_b"]
    return float(np.mean((ra > rb) == gold_pref))
