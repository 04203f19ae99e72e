"""Gold scorers (the stand-in for a human judge): the task's contextual judge (sentiment, coherence,
repetition; the default), its older TF-IDF sentiment model, a Hugging Face classifier, or the profanity
scorer of the toxicity objective. `load_gold(path)` picks by what the folder holds.

The TF-IDF scorer is stored as plain arrays (vocabulary JSON + idf/coef npz), never as a pickle, so
loading a data folder cannot execute code. Scoring re-implements sklearn's TF-IDF transform exactly
(tested against sklearn).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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


def load_gold(path, device=None):
    """A scorer config (a dict: learner/models/scorers.py), a local contextual or TF-IDF folder, or a Hugging Face classifier
    (hub name / folder) scored as a positive-minus-negative logit."""
    if isinstance(path, dict):
        from learner.models.scorers import make_scorer

        return make_scorer(path, device=device)
    p = Path(path)
    if (p / "gold.json").exists():
        return ContextualGold(p, device=device)
    if (p / "gold.npz").exists():
        return GoldScorer(p)
    return HFClassifierGold(str(path))


class ContextualGold:
    """The contextual gold judge (tasks/imdb/gold.py builds it): a positive review that a reader would accept.

        gold = cap * tanh(s / cap) - w_c * max(0, c0 - coherence) - w_r * max(0, repetition - r0) - w_d * max(0, d0 - diversity)

    s: logit of a sentiment classifier (the pretrained policy's full backbone fine-tuned on the real IMDB
    labels; contextual, unlike a bag of words); coherence: `TrigramLM.coherence`, a word trigram model of
    the reviews (not the policy); repetition: `ngram.repetition` (loops); diversity: `ngram.diversity` (formulaic text
    cycling through a few phrases). The parameters are in gold.json.
    `components(texts)` returns each term, for diagnosis (logged as gold/sentiment, gold/coherence, ...).
    """

    def __init__(self, folder: str | Path, device=None):
        from learner.models.ngram import TrigramLM
        from learner.models.reward import RewardModel

        folder = Path(folder)
        self.params = json.loads((folder / "gold.json").read_text())
        self.sentiment = RewardModel.load(folder / "sentiment", max_len=int(self.params["max_len"]), device=device)
        self.lm = TrigramLM.load(folder)

    def components(self, texts: list[str]) -> dict[str, np.ndarray]:
        from learner.models.ngram import diversity, repetition

        p = self.params
        logit = self.sentiment.score(list(texts)).double().numpy()
        coh = self.lm.coherence(texts)
        rep = np.asarray([repetition(t) for t in texts], dtype=np.float64)
        sent = p["sentiment_cap"] * np.tanh(logit / p["sentiment_cap"])
        pen_c = p["coherence_weight"] * np.maximum(0.0, p["coherence_floor"] - coh)
        pen_r = p["repetition_weight"] * np.maximum(0.0, rep - p["repetition_floor"])
        div = np.asarray([diversity(t) for t in texts], dtype=np.float64)
        pen_d = p["diversity_weight"] * np.maximum(0.0, p["diversity_floor"] - div)
        return {"gold": sent - pen_c - pen_r - pen_d, "sentiment_logit": logit, "sentiment": sent, "coherence": coh, "repetition": rep,
                "diversity": div, "coherence_penalty": pen_c, "repetition_penalty": pen_r, "diversity_penalty": pen_d}

    def score(self, texts: list[str]) -> np.ndarray:
        return self.components(texts)["gold"] if len(texts) else np.zeros(0)


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
