"""Runtime loaders: the policy (+ value head), the proxy reward models and their ensemble, the gold and
toxicity scorers, the drift evaluator and the transformers rollout engine."""
