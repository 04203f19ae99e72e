"""Actors: rollout engines, weight sync and the thin Ray shells around the learner's plain classes."""
