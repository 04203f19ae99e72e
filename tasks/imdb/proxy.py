"""Proxy reward-model ensemble (Coste et al. 2023 on Gao et al.'s synthetic setup).

Preference pairs: two initial-policy continuations of the same prompt, labelled by the gold scorer,
with a fraction `label_noise` of labels flipped (one noisy data set shared by all members). Members
are scalar-head sequence classifiers started from the pretrained policy (Gao et al. initialise RMs
from the pretrained LM), trained with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected),
and differ only in seed (head initialisation and data order).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from learner.config import TetherConfig
from tasks.imdb.data import ImdbSplit, make_prompts
from tasks.reward_models import new_member, pair_accuracy, train_member

log = logging.getLogger(__name__)


def make_pairs(cfg: TetherConfig, split: ImdbSplit, policy, tok, gold, *, n: int, heldout: bool, seed: int) -> dict:
    from tasks.imdb.policy import sample

    texts = split.heldout_text if heldout else split.train_text
    prompts = make_prompts(texts, n, cfg.task, seed=seed)
    doubled = [p for p in prompts for _ in range(2)]
    conts = sample(policy, tok, doubled, max_new_tokens=cfg.generation.max_new_tokens, temperature=cfg.generation.temperature, top_k=cfg.generation.top_k, seed=seed)
    full = [p + c for p, c in zip(doubled, conts)]
    g = gold.score(full).reshape(n, 2)
    return {"a": full[0::2], "b": full[1::2], "gold_a": g[:, 0], "gold_b": g[:, 1]}


def build_proxies(cfg: TetherConfig, split: ImdbSplit, policy_path, gold_path, out_dir: Path) -> dict:
    from sklearn.metrics import roc_auc_score
    from transformers import AutoTokenizer

    from learner.models.gold import load_gold
    from learner.models.policy import load_policy

    pc = cfg.proxy
    t0 = time.time()
    policy = load_policy(policy_path)
    tok = AutoTokenizer.from_pretrained(str(policy_path))
    gold = load_gold(gold_path)
    log.info("proxy: sampling %d training and %d held-out preference pairs from the initial policy", pc.n_pairs, pc.n_eval_pairs)
    train = make_pairs(cfg, split, policy, tok, gold, n=pc.n_pairs, heldout=False, seed=cfg.task.seed + 101)
    evalp = make_pairs(cfg, split, policy, tok, gold, n=pc.n_eval_pairs, heldout=True, seed=cfg.task.seed + 202)
    sample_s = time.time() - t0
    del policy
    # Gold preference, then one shared noisy relabelling (Coste et al.: 25% flipped).
    pref_a = train["gold_a"] > train["gold_b"]
    flip = np.random.default_rng(cfg.task.seed + 303).random(pc.n_pairs) < pc.label_noise
    noisy_pref_a = pref_a ^ flip
    chosen = [a if pa else b for a, b, pa in zip(train["a"], train["b"], noisy_pref_a)]
    rejected = [b if pa else a for a, b, pa in zip(train["a"], train["b"], noisy_pref_a)]
    (out_dir / "pairs_sample.json").write_text(json.dumps(
        [{"a": train["a"][i], "b": train["b"][i], "gold_a": float(train["gold_a"][i]), "gold_b": float(train["gold_b"][i]), "label_flipped": bool(flip[i])} for i in range(min(20, pc.n_pairs))],
        indent=1,
    ))
    n_rev = min(1000, len(split.heldout_text))
    members = []
    for k in range(pc.n_members):
        seed = cfg.task.seed * 1000 + k
        rm = new_member(cfg, policy_path, seed)
        t1 = time.time()
        losses = train_member(rm, chosen, rejected, cfg, seed, desc=f"proxy member {k + 1}/{pc.n_members}")
        train_s = time.time() - t1
        acc = pair_accuracy(rm, evalp)
        train_acc_noisy = float(np.mean((rm.score(chosen[:500]) > rm.score(rejected[:500])).numpy()))
        rev_scores = rm.score(split.heldout_text[:n_rev]).numpy()
        auc = float(roc_auc_score(split.heldout_label[:n_rev], rev_scores))
        rm.model.save_pretrained(str(out_dir / f"member-{k}"))
        rm.tok.save_pretrained(str(out_dir / f"member-{k}"))
        members.append({
            "seed": seed, "heldout_pair_acc_vs_gold": round(acc, 4), "train_pair_acc_vs_noisy_labels": round(train_acc_noisy, 4),
            "imdb_label_auc": round(auc, 4), "final_loss": round(float(np.mean(losses[-20:])), 4), "train_seconds": round(train_s, 1),
        })
        log.info("proxy member %d: held-out pair accuracy vs gold %.3f, IMDB AUC %.3f", k, acc, auc)
    return {
        "members": members,
        "n_train_pairs": pc.n_pairs,
        "n_eval_pairs": pc.n_eval_pairs,
        "label_noise": pc.label_noise,
        "flipped_fraction": round(float(flip.mean()), 4),
        "gold_margin_abs_mean": round(float(np.abs(train["gold_a"] - train["gold_b"]).mean()), 3),
        "sampling_seconds": round(sample_s, 1),
        "params_per_member": int(sum(p.numel() for p in rm.model.parameters())),
    }
