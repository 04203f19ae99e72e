"""learner.analysis.best_of_n: KL of best-of-n and the unbiased best-of-n estimator (Gao et al. 2022; Coste et al. 2023)."""
import itertools
import math

import numpy as np
import pytest
import torch

from learner.analysis.best_of_n import bon_curve, bon_unbiased, kl_bon, select_best


def _brute_force(proxy, gold, n):
    """Average over every n-subset of the (proxy, gold) of its argmax-proxy sample; ties split evenly."""
    ps, gs = [], []
    for sub in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[j] for j in sub)
        winners = [j for j in sub if proxy[j] == top]
        ps.append(top)
        gs.append(sum(gold[j] for j in winners) / len(winners))
    return sum(ps) / len(ps), sum(gs) / len(gs)


def test_kl_bon_by_hand():
    assert kl_bon(1) == 0.0
    assert kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bon(16) == pytest.approx(math.log(16) - 15 / 16)
    arr = kl_bon(np.array([1, 2, 4]))
    assert isinstance(arr, np.ndarray) and arr.shape == (3,)
    np.testing.assert_allclose(arr, [0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    assert np.all(np.diff(kl_bon(np.arange(1, 100))) > 0)  # increasing in n
    with pytest.raises(ValueError, match=">= 1"):
        kl_bon(0)


@pytest.mark.parametrize("n", range(1, 8))
def test_estimator_equals_brute_force_over_all_subsets(n):
    rng = np.random.default_rng(n)
    proxy, gold = rng.normal(size=7), rng.normal(size=7)  # continuous: tie-free
    est = bon_unbiased(proxy, gold, n)
    ref = _brute_force(proxy.tolist(), gold.tolist(), n)
    assert est == pytest.approx(ref, abs=1e-12)


def test_ties_are_broken_at_random_in_expectation():
    proxy = np.array([1.0, 2.0, 2.0, 0.5, 2.0, 1.0, 3.0])
    gold = np.array([0.3, -1.0, 4.0, 2.0, 0.5, 7.0, -2.0])
    for n in range(1, 8):
        assert bon_unbiased(proxy, gold, n) == pytest.approx(_brute_force(proxy, gold, n), abs=1e-12)
    # input order of tied samples does not matter
    perm = np.array([6, 4, 2, 0, 1, 3, 5])
    assert bon_unbiased(proxy[perm], gold[perm], 3) == pytest.approx(bon_unbiased(proxy, gold, 3), abs=1e-12)


def test_n_equal_1_is_the_plain_mean_and_n_equal_N_is_the_argmax():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=50), rng.normal(size=50)
    p1, g1 = bon_unbiased(proxy, gold, 1)
    assert p1 == pytest.approx(proxy.mean()) and g1 == pytest.approx(gold.mean())
    pN, gN = bon_unbiased(proxy, gold, 50)
    assert pN == proxy.max() and gN == pytest.approx(gold[np.argmax(proxy)])


def test_large_N_is_finite_and_proxy_increases_with_n():
    rng = np.random.default_rng(1)
    proxy = rng.normal(size=5000)
    gold = proxy + rng.normal(size=5000)
    c = bon_curve(proxy, gold, [1, 2, 4, 16, 64, 256])
    assert set(c) == {"n", "kl", "proxy", "gold"}
    assert all(v.shape == (6,) for v in c.values())
    assert np.all(np.isfinite(c["proxy"])) and np.all(np.diff(c["proxy"]) > 0)
    np.testing.assert_allclose(c["kl"], kl_bon(np.array([1, 2, 4, 16, 64, 256])))
    # E[max of 2 standard normals] = 1/sqrt(pi) = 0.564
    assert c["proxy"][1] == pytest.approx(1 / math.sqrt(math.pi), abs=0.05)


def test_bad_n_and_lengths_raise():
    with pytest.raises(ValueError, match="n must be in"):
        bon_unbiased([1.0, 2.0], [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="n must be in"):
        bon_unbiased([1.0, 2.0], [1.0, 2.0], 0)
    with pytest.raises(ValueError, match="same length"):
        bon_unbiased([1.0, 2.0], [1.0], 1)


def test_select_best_tensor_and_array():
    s = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 2.0], [-5.0, -4.0, -6.0]])  # (P=3, n=3)
    idx = select_best(s)
    assert isinstance(idx, torch.Tensor) and idx.tolist() == [1, 0, 1]
    idx_np = select_best(s.numpy())
    assert isinstance(idx_np, np.ndarray) and idx_np.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match=r"\(P, n\)"):
        select_best(torch.zeros(3))
