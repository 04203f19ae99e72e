"""Gold evaluation and drift: gold reward, KL from the initial policy, perplexity under the initial model.

KL(pi || pi_0) over sequences = E_pi[sum_t KL_t], estimated from samples of pi with their behaviour
log-probs: the k1 sum (sum_t log pi - log pi_0) and the lower-variance k3 sum (both unbiased at
temperature 1; Schulman's estimators, docs/methods.md s.1). Perplexity of the samples under pi_0 is
the Elastic Reset paper's second drift measure.
"""
from __future__ import annotations

import numpy as np
import torch

from learner.methods.kl import kl_estimate
from learner.methods.logprobs import masked_mean, masked_sum
from learner.models.device import model_device, to_device
from learner.models.policy import pad_batch, response_logprobs
from learner.types import Rollouts


class GoldEvaluator:
    def __init__(self, gold, init_model, pad_id: int):
        self.gold, self.init_model, self.pad_id = gold, init_model.eval(), pad_id

    def components(self, samples: "list[str] | Rollouts") -> dict[str, np.ndarray]:
        """{"gold": (N,)} plus the judge's terms when it has them (the contextual gold: sentiment, coherence, repetition).
        ``samples``: whole texts, or Rollouts (a scorer gold then reads the task's prompt, the response and the metadata)."""
        texts = samples.texts if isinstance(samples, Rollouts) else list(samples)
        if isinstance(samples, Rollouts) and hasattr(self.gold, "score_samples"):
            from learner.models.scorers import scorer_prompts

            c = {"gold": self.gold.score_samples(scorer_prompts(samples), samples.responses, samples.meta)}
        else:
            c = self.gold.components(texts) if hasattr(self.gold, "components") else {"gold": self.gold.score(texts)}
        return {k: np.asarray(v, dtype=np.float64) for k, v in c.items()}

    @classmethod
    def from_paths(cls, gold_path, policy_path, *, device=None) -> "GoldEvaluator":
        from transformers import AutoTokenizer

        from learner.models.gold import load_gold
        from learner.models.policy import load_policy

        tok = AutoTokenizer.from_pretrained(str(policy_path))
        from learner.models.tokenizer import pad_token_id

        return cls(load_gold(gold_path, device=device), load_policy(policy_path).to(device or "cpu"), pad_token_id(tok))

    def gold_scores(self, samples: "list[str] | Rollouts") -> list[float]:
        return [float(x) for x in self.components(samples)["gold"]]

    @torch.no_grad()
    def init_logprobs(self, r: Rollouts, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        lps, masks = [], []
        R = max(len(x) for x in r.response_ids)
        for i in range(0, len(r), batch_size):
            b = to_device(pad_batch(r.plain_prompt_ids[i : i + batch_size], r.response_ids[i : i + batch_size], self.pad_id),
                          model_device(self.init_model))  # pi_0 sees no control token
            lp = response_logprobs(self.init_model, b)
            lps.append(torch.nn.functional.pad(lp, (0, R - lp.shape[1])))
            masks.append(torch.nn.functional.pad(b["response_mask"], (0, R - lp.shape[1])))
        return torch.cat(lps), torch.cat(masks)

    def evaluate(self, r: Rollouts, *, prefix: str = "eval") -> dict[str, float]:
        return self.drift_and_gold(r, prefix=prefix)[0]

    def drift_and_gold(self, r: Rollouts, *, prefix: str = "eval") -> tuple[dict[str, float], list[float]]:
        """The batch's drift and gold statistics, and each sample's gold reward: the judge scores the batch once."""
        init_lp, mask = self.init_logprobs(r)  # (B, R)
        R = mask.shape[1]
        beh = torch.tensor([x + [0.0] * (R - len(x)) for x in r.behaviour_logprobs], device=init_lp.device)  # (B, R)
        k1 = masked_sum(kl_estimate(beh, init_lp, "k1"), mask, dim=1)  # (B,)
        k3 = masked_sum(kl_estimate(beh, init_lp, "k3"), mask, dim=1)
        texts = r.texts
        comp = self.components(r)
        gold = comp["gold"]
        extra = {f"{prefix}/gold_{k}": float(comp[k].mean()) for k in ("sentiment", "coherence", "repetition", "diversity") if k in comp}
        if hasattr(self.gold, "prob"):  # the toxicity objective: report toxicity itself too
            p = np.asarray(self.gold.prob(texts), dtype=np.float64)
            extra |= {f"{prefix}/toxicity_mean": float(p.mean()), f"{prefix}/toxic_frac": float((p > 0.5).mean())}
        return {
            **extra,
            f"{prefix}/gold_mean": float(gold.mean()),
            f"{prefix}/gold_std": float(gold.std()),
            f"{prefix}/kl_from_init_k1": float(k1.mean()),
            f"{prefix}/kl_from_init_k3": float(k3.mean()),
            f"{prefix}/ppl_under_init": float(torch.exp(-masked_mean(init_lp, mask))),
            f"{prefix}/ppl_self": float(torch.exp(-masked_mean(beh, mask))),
        }, [float(x) for x in gold]
