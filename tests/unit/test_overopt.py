"""The over-optimisation measure (learner/analysis/overopt.py) on constructed curves."""
import numpy as np
import pytest

from learner.analysis.overopt import peak_and_fall, smooth3


def test_a_rise_then_fall_with_a_rising_proxy_is_overoptimisation():
    steps = np.arange(0, 42, 2)
    d = np.sqrt(np.linspace(0, 40, len(steps)))
    gold = d * (1.0 - 0.6 * np.log(np.maximum(d, 1e-9)))  # Gao's RL form: peak at d = e^(1/0.6 - 1), KL 3.8
    proxy = 0.5 * d
    o = peak_and_fall(steps, gold, proxy, kl=d**2)
    assert o.gain > 0 and o.proxy_rise > 0
    assert o.fall_fraction == pytest.approx((o.peak - gold[-3:].mean()) / (o.peak - gold[0]))
    assert o.overoptimised() == (o.fall_fraction >= 0.3)
    assert 0 < o.peak_index < len(steps) - 1 and o.kl_at_peak == pytest.approx(d[o.peak_index] ** 2)


def test_monotone_gold_is_not_overoptimisation_and_one_noisy_point_is_not_a_peak():
    steps = np.arange(10)
    gold = np.linspace(0, 1, 10)
    o = peak_and_fall(steps, gold, gold)
    assert o.fall_fraction < 0.1 and not o.overoptimised()  # the tail mean sits a little below the end
    plateau = np.array([0, 0.5, 0.8, 1.4, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])  # one noisy evaluation at step 3
    assert (1.4 - 0.9) / 1.4 > 0.3  # the raw maximum would call this a 36% fall
    o = peak_and_fall(steps, plateau, steps)
    assert o.peak == pytest.approx((1.4 + 0.9 + 0.9) / 3) and o.fall_fraction < 0.2 and not o.overoptimised()


def test_a_falling_proxy_or_no_gain_is_not_overoptimisation():
    steps = np.arange(8)
    gold = np.array([0, 1, 2, 2, 1, 0.5, 0.5, 0.5])
    assert peak_and_fall(steps, gold, np.arange(8.0)).overoptimised()
    assert not peak_and_fall(steps, gold, -np.arange(8.0)).overoptimised()  # the proxy fell too: not Goodhart
    assert not peak_and_fall(steps, -np.arange(8.0), np.arange(8.0)).overoptimised()  # never rose


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="at least 3"):
        peak_and_fall([0, 1], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        peak_and_fall([0, 1, 2], [0, np.nan, 1], [0, 1, 2])
    np.testing.assert_allclose(smooth3([0, 3, 0, 3]), [1.5, 1, 2, 1.5])
