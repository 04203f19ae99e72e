"""The gold reward R*: sentiment scorer trained on the real IMDB labels; reward = its logit.

Stored as plain arrays (vocabulary JSON + idf/coef npz), never as a pickle, so loading a data
folder cannot execute code. Scoring re-implements sklearn's TF-IDF transform exactly (tested).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from learner.assets.data import ImdbSplit
from learner.config import GoldConfig

_VEC_KW = dict(ngram_range=(1, 2), sublinear_tf=True, min_df=2, strip_accents="unicode", lowercase=True)


def train_gold(cfg: GoldConfig, split: ImdbSplit, out_dir: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    t0 = time.time()
    vec = TfidfVectorizer(max_features=cfg.max_features, **_VEC_KW)
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


class GoldScorer:
    """score(texts) -> logit of 'positive' (float64 array); the gold reward of Gao et al.'s synthetic setup."""

    def __init__(self, folder: str | Path):
        from sklearn.feature_extraction.text import CountVectorizer

        folder = Path(folder)
        vocab = json.loads((folder / "vocab.json").read_text())
        arr = np.load(folder / "gold.npz")
        self.idf, self.coef, self.intercept = arr["idf"], arr["coef"], float(arr["intercept"])
        kw = {k: v for k, v in _VEC_KW.items() if k not in ("sublinear_tf", "min_df")}
        self._counter = CountVectorizer(vocabulary=vocab, **kw)

    def score(self, texts: list[str]) -> np.ndarray:
        x = self._counter.transform(texts).astype(np.float64)  # (N, V) sparse counts
        x.data = np.log(x.data) + 1.0  # sublinear tf
        x = x.multiply(self.idf).tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
        norms[norms == 0] = 1.0
        return np.asarray(x @ self.coef).ravel() / norms + self.intercept


def load_gold(path: str | Path):
    """Local TF-IDF folder, or a Hugging Face classifier (hub name / folder) scored as a positive-minus-negative logit."""
    from learner.assets.toxicity import PROFANITY_CHECK, ToxicityScorer

    if str(path) == PROFANITY_CHECK:
        return ToxicityScorer()
    p = Path(path)
    if (p / "gold.npz").exists():
        return GoldScorer(p)
    return HFClassifierGold(str(path))


class HFClassifierGold:
    """e.g. 'lvwerra/distilbert-imdb' on a machine that reaches a hub: reward = logit[pos] - logit[neg]."""

    def __init__(self, name: str, batch_size: int = 32):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(name)
        self.model = AutoModelForSequenceClassification.from_pretrained(name).eval()
        self.batch_size = batch_size
        self._torch = torch

    def score(self, texts: list[str]) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True, max_length=512)
                logits = self.model(**enc).logits
                out.append((logits[:, -1] - logits[:, 0]).double().numpy())
        return np.concatenate(out) if out else np.zeros(0)
