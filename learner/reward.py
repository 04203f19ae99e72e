"""Scoring with the proxy ensemble: every member's score plus the configured aggregate (Coste et al. 2023)."""
from __future__ import annotations

from pathlib import Path

import torch

from learner.methods.ensemble import aggregate
from learner.types import Rollouts, ScoredRollouts


class ProxyEnsemble:
    def __init__(self, member_paths: list[str | Path], *, aggregation: str, uwo_lambda: float, max_len: int = 96):
        from learner.assets.proxy import RewardModel
        from learner.assets.toxicity import PROFANITY_CHECK, ToxicityRewardMember

        self.members = [ToxicityRewardMember() if str(p) == PROFANITY_CHECK else RewardModel.load(p, max_len=max_len) for p in member_paths]
        self.aggregation, self.uwo_lambda = aggregation, uwo_lambda

    def score_texts(self, texts: list[str]) -> torch.Tensor:
        """(B, k) scores of every member."""
        return torch.stack([m.score(texts) for m in self.members], dim=1)

    def score(self, rollouts: Rollouts, *, gold=None) -> ScoredRollouts:
        texts = rollouts.texts
        s = self.score_texts(texts)
        agg, spread = aggregate(s, self.aggregation, uwo_lambda=self.uwo_lambda)
        gold_scores = gold.score(texts).tolist() if gold is not None else None
        return ScoredRollouts(rollouts, s.tolist(), agg.tolist(), spread.tolist(), gold_scores)
