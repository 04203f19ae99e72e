"""Ray metrics (``ray.util.metrics``) exported by the actors, so the Ray dashboard's Metrics view and
Prometheus (scraping the node's metrics-export port) show each run's reward, gold reward, KL and
tokens/s. Prometheus names cannot hold '/', so ``reward/gold_mean`` is exported as
``tether_reward_gold_mean`` with the tag ``run`` (the config's name); Ray prefixes ``ray_``.
"""
from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

DESCRIPTIONS = {
    "reward/proxy_mean": "Aggregated proxy (reward-ensemble) reward of the last batch.",
    "ensemble/std": "Mean spread of the proxy ensemble members over the last batch.",
    "reward/gold_mean": "Gold reward of the last batch (or evaluation).",
    "kl/from_init": "KL from the initial policy per sequence (k3, nats).",
    "kl/coef": "KL penalty beta used in the last PPO step.",
    "kl/to_ref": "KL to the reference per sequence in the last PPO step.",
    "loss/policy": "PPO policy loss of the last step.",
    "perf/rollout_tokens_per_s": "Rollout generation throughput of one rollout actor (tokens/s).",
    # the gold-free guard's signals, recorded by the run's driver at every evaluation (learner/guard.py)
    "guard/disagreement": "Guard: mean std across proxy members of member-normalised scores (held-out evaluation).",
    "guard/rank_agreement": "Guard: mean pairwise Spearman correlation between proxy members.",
    "guard/gain_per_kl": "Guard: proxy gain per nat of KL since the previous evaluation.",
    "guard/gain_per_kl_ratio": "Guard: that gain over the run's early rate.",
    "guard/distinct2": "Guard: distinct-2 of the evaluation's samples.",
    "guard/distinct2_ratio": "Guard: distinct-2 over pi_0's.",
    "guard/ppl_ratio": "Guard: perplexity of the samples under pi_0, over pi_0's own.",
    "guard/repetition": "Guard: fraction of repeated word 3-grams within a sample.",
    "guard/proxy_fit_beta": "Guard: beta of the RL form fitted online to the proxy curve.",
    "guard/alarm": "Guard: 1 once the alarm is raised (guard.enabled).",
}
GUARD_METRICS = [k for k in DESCRIPTIONS if k.startswith("guard/")]


def prom_name(metric: str) -> str:
    return "tether_" + metric.replace("/", "_")


class RoleMetrics:
    """Gauges for the metric names given; ``record`` ignores names it does not export and non-finite values."""

    def __init__(self, run: str, names: list[str]):
        from ray.util.metrics import Gauge

        self.tags = {"run": run}
        self.gauges = {n: Gauge(prom_name(n), description=DESCRIPTIONS.get(n, n), tag_keys=("run",)) for n in names}

    def record(self, values: dict[str, float]) -> None:
        for name, v in values.items():
            g = self.gauges.get(name)
            if g is not None and v is not None and math.isfinite(float(v)):
                g.set(float(v), tags=self.tags)


def role_metrics(run: str, names: list[str]) -> RoleMetrics | None:
    try:
        return RoleMetrics(run, names)
    except Exception:  # noqa: BLE001 - metrics are an aid; an actor must not fail for them
        log.warning("Ray metrics unavailable", exc_info=True)
        return None
