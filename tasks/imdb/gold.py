"""Training the gold reward R*: the contextual judge (default), or a TF-IDF sentiment classifier fit on the
real IMDB labels (reward = its logit, saved as plain arrays for `learner.models.gold.GoldScorer`, no pickle).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from learner.config import GoldConfig
from learner.models.gold import TFIDF_KW, GoldScorer
from tasks.imdb.data import ImdbSplit


def train_gold(cfg: GoldConfig, split: ImdbSplit, out_dir: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    t0 = time.time()
    vec = TfidfVectorizer(max_features=cfg.max_features, **TFIDF_KW)
    x = vec.fit_transform(split.train_text)
    clf = LogisticRegression(C=cfg.C, max_iter=2000)
    clf.fit(x, split.train_label)
    fit_s = time.time() - t0
    vocab = {k: int(v) for k, v in vec.vocabulary_.items()}
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    np.savez(out_dir / "gold.npz", idf=vec.idf_.astype(np.float64), coef=clf.coef_[0].astype(np.float64), intercept=np.float64(clf.intercept_[0]))
    scorer = GoldScorer(out_dir)
    t1 = time.time()
    logits = scorer.score(split.heldout_text)
    per_text_ms = 1000 * (time.time() - t1) / max(1, len(split.heldout_text))
    prob = 1 / (1 + np.exp(-logits))
    return {
        "heldout_accuracy": round(float(accuracy_score(split.heldout_label, prob > 0.5)), 4),
        "heldout_auc": round(float(roc_auc_score(split.heldout_label, logits)), 4),
        "n_train": len(split.train_text),
        "n_heldout": len(split.heldout_text),
        "fit_seconds": round(fit_s, 1),
        "ms_per_text": round(per_text_ms, 3),
        "heldout_logit_mean": round(float(logits.mean()), 3),
        "heldout_logit_std": round(float(logits.std()), 3),
    }


def _window(text: str, n: int) -> str:
    return " ".join(text.split(" ")[:n])


def train_contextual_gold(cfg: GoldConfig, split: ImdbSplit, policy_path, out_dir: Path, *, seed: int = 0) -> dict:
    """The contextual judge (`learner.models.gold.ContextualGold`): a sentiment classifier fine-tuned from the
    pretrained policy's full backbone on the real IMDB labels, and a word trigram model of the reviews."""
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from learner.models.gold import ContextualGold
    from learner.models.ngram import TrigramLM, repetition
    from learner.models.reward import RewardModel

    t0 = time.time()
    lm = TrigramLM.fit(split.train_text)
    lm.save(out_dir)
    ngram_s = time.time() - t0

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(policy_path))
    model = AutoModelForSequenceClassification.from_pretrained(str(policy_path), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.config.tether_pooling = "mean"
    rm = RewardModel(model, tok, cfg.max_len)
    n = len(split.train_text) if cfg.n_train is None else min(cfg.n_train, len(split.train_text))
    texts = [_window(t, cfg.window_words) for t in split.train_text[:n]]
    labels = torch.as_tensor(split.train_label[:n], dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20)) * max(0.0, 1 - s / steps))
    rng = np.random.default_rng(seed)
    model.train()
    bar = tqdm(total=steps, desc="gold sentiment model", unit="step", leave=False)
    losses: list[float] = []
    t1 = time.time()
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.binary_cross_entropy_with_logits(rm.forward([texts[j] for j in idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
    bar.close()
    train_s = time.time() - t1
    model.eval()
    model.save_pretrained(str(out_dir / "sentiment"))
    tok.save_pretrained(str(out_dir / "sentiment"))
    params = {k: getattr(cfg, k) for k in ("max_len", "sentiment_cap", "coherence_floor", "coherence_weight", "repetition_floor", "repetition_weight",
                                           "diversity_floor", "diversity_weight")}
    (out_dir / "gold.json").write_text(json.dumps(params, indent=1))

    gold = ContextualGold(out_dir)
    held = [_window(t, 50) for t in split.heldout_text[:2000]]
    y = split.heldout_label[: len(held)]
    t2 = time.time()
    c = gold.components(held)
    per_text_ms = 1000 * (time.time() - t2) / max(1, len(held))
    pct = lambda x: [round(float(v), 3) for v in np.percentile(x, [1, 5, 50, 95, 99])]
    return {
        "heldout_sentiment_auc_50_words": round(float(roc_auc_score(y, c["sentiment_logit"])), 4),
        "heldout_sentiment_accuracy_50_words": round(float(np.mean((c["sentiment_logit"] > 0) == y)), 4),
        "heldout_gold_auc_50_words": round(float(roc_auc_score(y, c["gold"])), 4),
        "natural_coherence_pct_1_5_50_95_99": pct(c["coherence"]),
        "natural_repetition_pct_1_5_50_95_99": pct(c["repetition"]),
        "natural_diversity_pct_1_5_50_95_99": pct(c["diversity"]),
        "natural_fraction_penalised": round(float(np.mean((c["coherence_penalty"] + c["repetition_penalty"] + c["diversity_penalty"]) > 0)), 4),
        "natural_gold_pct_1_5_50_95_99": pct(c["gold"]),
        "n_train": n, "n_heldout_windows": len(held), "ngram_vocab": lm.V, "ngram_trigrams": len(lm.a["tri"]),
        "ngram_seconds": round(ngram_s, 1), "train_seconds": round(train_s, 1), "final_loss": round(float(np.mean(losses[-20:])), 4),
        "ms_per_text": round(per_text_ms, 3), "params": int(sum(p.numel() for p in model.parameters())),
        "repetition_check": round(repetition("the film is great " * 8), 3),
    }
