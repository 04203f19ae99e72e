"""learner.analysis.scaling_laws: Gao et al. 2022 best-of-n and RL gold-reward forms."""
import math

import numpy as np
import pytest

from learner.analysis.scaling_laws import d_from_kl, fit_bon, fit_rl, recentre


def test_bon_recovers_coefficients_exactly_and_peak_by_hand():
    d = np.linspace(0.0, 4.0, 9)
    r = d * (2.0 - 0.5 * d)  # alpha 2, beta 0.5
    f = fit_bon(d, r)
    assert f.form == "bon" and f.n_points == 9
    assert abs(f.alpha - 2.0) < 1e-8 and abs(f.beta - 0.5) < 1e-8
    assert f.r2 == pytest.approx(1.0, abs=1e-12)
    # d* = alpha / (2 beta) = 2 / 1 = 2; R(2) = 2 * (2 - 0.5 * 2) = 2
    assert f.peak_d == pytest.approx(2.0, abs=1e-8) and f.peak_r == pytest.approx(2.0, abs=1e-8)
    np.testing.assert_allclose(f.predict(d), r, atol=1e-10)


def test_rl_recovers_coefficients_exactly_and_peak_by_hand():
    d = np.array([0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
    r = d * (2.0 - 1.0 * np.log(d))  # alpha 2, beta 1
    f = fit_rl(d, r)
    assert f.form == "rl" and f.n_points == 7
    assert abs(f.alpha - 2.0) < 1e-8 and abs(f.beta - 1.0) < 1e-8
    assert f.r2 == pytest.approx(1.0, abs=1e-12)
    # d* = exp(alpha / beta - 1) = e; R(e) = e * (2 - 1) = e
    assert f.peak_d == pytest.approx(math.e, abs=1e-8) and f.peak_r == pytest.approx(math.e, abs=1e-8)
    np.testing.assert_allclose(f.predict(d), r, atol=1e-10)
    assert f.predict(0.0) == 0.0  # d log d -> 0


def test_rl_drops_d_zero_points():
    d = np.array([0.0, 0.0, 0.5, 1.5, 3.0])
    r = np.where(d > 0, d * (1.0 - 0.3 * np.log(np.where(d > 0, d, 1.0))), 5.0)  # junk at d = 0 is ignored
    f = fit_rl(d, r)
    assert f.n_points == 3
    assert abs(f.alpha - 1.0) < 1e-8 and abs(f.beta - 0.3) < 1e-8


def test_noisy_fits_are_close():
    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 6.0, 200)
    fb = fit_bon(d, d * (1.5 - 0.2 * d) + rng.normal(0, 0.05, d.size))
    assert fb.alpha == pytest.approx(1.5, abs=0.03) and fb.beta == pytest.approx(0.2, abs=0.01)
    assert 0.95 < fb.r2 < 1.0
    assert fb.peak_d == pytest.approx(3.75, abs=0.2)
    fr = fit_rl(d, d * (1.0 - 0.4 * np.log(d)) + rng.normal(0, 0.05, d.size))
    assert fr.alpha == pytest.approx(1.0, abs=0.03) and fr.beta == pytest.approx(0.4, abs=0.02)
    assert 0.95 < fr.r2 < 1.0


def test_no_peak_when_beta_not_positive():
    d = np.array([0.5, 1.0, 2.0, 3.0])
    f = fit_bon(d, d * (1.0 + 0.2 * d))  # beta = -0.2: still increasing
    assert f.beta == pytest.approx(-0.2) and f.peak_d == math.inf and f.peak_r is None
    f = fit_rl(d, d * (1.0 + 0.1 * np.log(d)))
    assert f.beta == pytest.approx(-0.1) and f.peak_d == math.inf and f.peak_r is None
    # alpha <= 0 < beta: R decreases from d = 0, the maximum on d >= 0 is at 0
    f = fit_bon(d, d * (-1.0 - 0.5 * d))
    assert f.peak_d == 0.0 and f.peak_r == 0.0


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_bon([1.0], [0.5])
    with pytest.raises(ValueError, match="same length"):
        fit_bon([1.0, 2.0, 3.0], [0.5, 0.7])
    with pytest.raises(ValueError, match="same length"):
        fit_rl([1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match="d > 0"):
        fit_rl([0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_rl([0.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        fit_bon([-1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        fit_bon([1.0, 2.0], [np.nan, 1.0])
    with pytest.raises(ValueError, match="distinct d"):
        fit_bon([2.0, 2.0, 2.0], [1.0, 1.1, 0.9])


def test_helpers():
    np.testing.assert_allclose(recentre([1.0, 2.5, 0.0], 1.0), [0.0, 1.5, -1.0])
    np.testing.assert_allclose(d_from_kl([0.0, 4.0, 2.25]), [0.0, 2.0, 1.5])
    with pytest.raises(ValueError, match="KL"):
        d_from_kl([-0.1])
