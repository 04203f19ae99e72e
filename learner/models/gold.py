"""Gold scorers (the stand-in for a human judge): the task's TF-IDF sentiment model, a Hugging Face
classifier, or the profanity scorer of the toxicity objective. `load_gold(path)` picks by path.

The TF-IDF scorer is stored as plain arrays (vocabulary JSON + idf/coef npz), never as a pickle, so
loading a data folder cannot execute code. Scoring re-implements sklearn's TF-IDF transform exactly
(tested against sklearn).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from learner.models.toxicity import PROFANITY_CHECK, ToxicityScorer

TFIDF_KW = dict(ngram_range=(1, 2), sublinear_tf=True, min_df=2, strip_accents="unicode", lowercase=True)
"""The vectoriser settings of the TF-IDF gold: training (tasks/imdb/gold.py) and scoring share them."""


class GoldScorer:
    """score(texts) -> logit of 'positive' (float64 array); the gold reward of Gao et al.'s synthetic setup."""

    def __init__(self, folder: str | Path):
        from sklearn.feature_extraction.text import CountVectorizer

        folder = Path(folder)
        vocab = json.loads((folder / "vocab.json").read_text())
        arr = np.load(folder / "gold.npz")
        self.idf, self.coef, self.intercept = arr["idf"], arr["coef"], float(arr["intercept"])
        kw = {k: v for k, v in TFIDF_KW.items() if k not in ("sublinear_tf", "min_df")}
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
