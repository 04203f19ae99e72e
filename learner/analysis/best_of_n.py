"""Best-of-n sampling: KL from the base policy and unbiased score estimates (docs/methods.md s.3, s.4).

References: Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization" (best-of-n,
KL_bon = log n - (n - 1) / n, and the unbiased estimator from N >= n samples); Coste et al. 2023,
"Reward Model Ensembles Help Mitigate Overoptimization" (same estimator, used for the gold score).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln
from torch import Tensor

from learner.methods.ensemble import aggregate


def kl_bon(n: int | ArrayLike) -> float | NDArray[np.float64]:
    """KL(BoN(n) || pi_0) = log n - (n - 1) / n (Gao et al. 2022); 0 for n = 1.

    It is an upper bound of the true KL that is tight for continuous (tie-free) scores.
    A scalar gives a float, an array an array of the same shape.
    """
    arr = np.asarray(n, dtype=np.float64)
    if np.any(arr < 1) or not np.all(np.isfinite(arr)):
        raise ValueError(f"n must be >= 1 and finite, got {n}")
    out = np.log(arr) - (arr - 1.0) / arr
    return float(out) if out.ndim == 0 else out


def _bon_weights(N: int, n: int) -> NDArray[np.float64]:
    """P(the sample of rank i, 1-based ascending, is the max of a uniform n-subset) = C(i-1, n-1) / C(N, n).

    Computed in log-space (gammaln) so N in the thousands does not overflow. Returns (N,), sums to 1.
    """
    i = np.arange(1, N + 1, dtype=np.float64)  # (N,) ranks
    w = np.zeros(N)
    ok = i >= n  # ranks below n are never the max of an n-subset
    log_num = gammaln(i[ok]) - gammaln(n) - gammaln(i[ok] - n + 1)  # log C(i-1, n-1)
    log_den = gammaln(N + 1) - gammaln(n + 1) - gammaln(N - n + 1)  # log C(N, n)
    w[ok] = np.exp(log_num - log_den)
    return w


def bon_unbiased(proxy: ArrayLike, gold: ArrayLike, n: int) -> tuple[float, float]:
    """Unbiased (proxy, gold) expectation of the best-of-n sample, best by proxy, from N >= n i.i.d. samples.

    proxy, gold: (N,) scores of the same samples. Equals the average over all C(N, n) subsets of the
    (proxy, gold) of each subset's argmax-proxy sample (Gao et al. 2022; docs/methods.md s.4).
    Ties in proxy are broken uniformly at random, in expectation: tied samples share their mean gold.

    Naive form (exponential in N):
        pairs = [max(sub, key=lambda j: proxy[j]) for sub in itertools.combinations(range(N), n)]
        return mean(proxy[j] for j in pairs), mean(gold[j] for j in pairs)
    """
    p = np.asarray(proxy, dtype=np.float64).reshape(-1)  # (N,)
    g = np.asarray(gold, dtype=np.float64).reshape(-1)  # (N,)
    if p.shape != g.shape:
        raise ValueError(f"proxy and gold must have the same length, got {p.size} and {g.size}")
    N = p.size
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, N={N}], got {n}")
    order = np.argsort(p, kind="stable")  # ascending proxy
    p_s, g_s = p[order], g[order]  # (N,)
    # random tie-breaking: every member of a tie group is equally likely to take each of its ranks
    _, first, counts = np.unique(p_s, return_index=True, return_counts=True)
    if np.any(counts > 1):
        group_mean = np.add.reduceat(g_s, first) / counts  # (G,)
        g_s = np.repeat(group_mean, counts)
    w = _bon_weights(N, int(n))  # (N,)
    return float(w @ p_s), float(w @ g_s)


def bon_curve(proxy: ArrayLike, gold: ArrayLike, ns: list[int]) -> dict[str, NDArray[np.float64]]:
    """Best-of-n curve over ``ns``: {"n", "kl" (nats, kl_bon), "proxy", "gold"}, each (len(ns),)."""
    rows = [bon_unbiased(proxy, gold, n) for n in ns]
    return {
        "n": np.asarray(ns, dtype=np.int64),
        "kl": np.asarray(kl_bon(np.asarray(ns)), dtype=np.float64).reshape(-1),
        "proxy": np.asarray([r[0] for r in rows], dtype=np.float64),
        "gold": np.asarray([r[1] for r in rows], dtype=np.float64),
    }


def select_best(scores: Tensor | ArrayLike) -> Tensor | NDArray[np.int64]:
    """Index of the best of n candidates per prompt. scores: (P, n) -> (P,); a Tensor gives a Tensor.

    Ties go to the first candidate (argmax convention). Aggregate ensemble scores first (learner.methods.ensemble).
    """
    if isinstance(scores, Tensor):
        if scores.dim() != 2:
            raise ValueError(f"scores must be (P, n), got shape {tuple(scores.shape)}")
        return scores.argmax(dim=1)
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"scores must be (P, n), got shape {arr.shape}")
    return np.argmax(arr, axis=1)


def bon_ns(n_max: int, *, dense_up_to: int = 64, points: int = 40) -> list[int]:
    """Every n in 1..n_max up to ``dense_up_to``; beyond, ~``points`` log-spaced n plus the powers of two (always 1 and n_max)."""
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if n_max <= dense_up_to:
        return list(range(1, n_max + 1))
    grid = np.unique(np.round(np.geomspace(1, n_max, points)).astype(int))
    pow2 = [2**i for i in range(int(math.log2(n_max)) + 1)]
    return sorted({1, n_max, *grid.tolist(), *pow2})


def ensemble_bon_curves(members: np.ndarray, gold: np.ndarray, ns: list[int], *, aggregation: str, uwo_lambda: float) -> dict:
    """Best-of-n curve of one (ensemble, aggregation), averaged over prompts.

    members: (P, N, k) member scores; gold: (P, N). Selection is by the aggregate (learner.methods.ensemble.aggregate).
    Returns lists of len(ns): n, kl (nats), proxy (aggregate of the pick), proxy_member_mean (member mean of
    the pick), gold, gold_se (standard error over prompts).
    """
    P, N, k = members.shape
    agg = _aggregate_np(members, aggregation, uwo_lambda)  # (P, N)
    mmean = members.mean(axis=2)  # (P, N)
    per_prompt = [bon_curve(agg[i], gold[i], ns) for i in range(P)]
    gold_pp = np.stack([c["gold"] for c in per_prompt])  # (P, len(ns))
    proxy_pp = np.stack([c["proxy"] for c in per_prompt])  # (P, len(ns))
    # the member mean of the sample picked by the aggregate: the same estimator with member mean as the "gold"
    mmean_pp = np.stack([bon_curve(agg[i], mmean[i], ns)["gold"] for i in range(P)])
    se = gold_pp.std(axis=0, ddof=1) / math.sqrt(P) if P > 1 else np.full(len(ns), np.nan)
    return {
        "n": list(ns), "kl": np.asarray(kl_bon(np.asarray(ns)), dtype=np.float64).reshape(-1).tolist(),
        "proxy": proxy_pp.mean(axis=0).tolist(), "proxy_member_mean": mmean_pp.mean(axis=0).tolist(),
        "gold": gold_pp.mean(axis=0).tolist(), "gold_se": se.tolist(),
    }


def _aggregate_np(members: np.ndarray, aggregation: str, uwo_lambda: float) -> np.ndarray:
    P, N, k = members.shape
    agg, _ = aggregate(torch.from_numpy(members.reshape(P * N, k)), aggregation, uwo_lambda=uwo_lambda)
    return agg.double().numpy().reshape(P, N)


def bon_gold_per_prompt(members: np.ndarray, gold: np.ndarray, ns: list[int], *, aggregation: str, uwo_lambda: float) -> np.ndarray:
    """(P, len(ns)): each prompt's unbiased E[gold] of best-of-n by the aggregate of ``members`` (P, N, k), for
    each n; the mean over prompts is ``ensemble_bon_curves``' gold (per prompt, so prompts can be resampled)."""
    agg = _aggregate_np(members, aggregation, uwo_lambda)
    return np.stack([bon_curve(agg[i], gold[i], ns)["gold"] for i in range(members.shape[0])])
