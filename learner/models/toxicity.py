"""The toxicity objective (Quark's home task, Lu et al. 2022): alt-profanity-check as the scorer.

alt-profanity-check ships its linear SVM + vectorizer inside the wheel, so it runs offline. It gives
p = P(offensive | text); the reward is the non-toxicity logit log((1 - p) / p), clipped to +-12 so a
probability of exactly 0 or 1 stays finite. The same scorer is the gold and the (one-member) proxy,
as Quark uses the Perspective API both to train and to evaluate.
"""
from __future__ import annotations

import numpy as np

LOGIT_CLIP = 12.0


class ToxicityScorer:
    """score(texts) -> (N,) non-toxicity logits; prob(texts) -> (N,) offensive-language probabilities."""

    def __init__(self) -> None:
        from profanity_check import predict_prob

        self._predict = predict_prob

    def prob(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return np.asarray(self._predict(list(texts)), dtype=np.float64)

    def score(self, texts: list[str]) -> np.ndarray:
        p = np.clip(self.prob(texts), 1e-12, 1 - 1e-12)
        return np.clip(np.log1p(-p) - np.log(p), -LOGIT_CLIP, LOGIT_CLIP)
