"""Training the gold reward R*: a TF-IDF sentiment classifier fit on the real IMDB labels; reward = its logit.

Saved as plain arrays for `learner.models.gold.GoldScorer` (no pickle).
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
