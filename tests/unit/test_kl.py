"""learner.methods.kl: KL estimators (k1/k2/k3), exact full-vocabulary KL and the KL controllers."""
import math

import pytest
import torch

from learner.methods.kl import (
    AdaptiveKLController,
    FixedKLController,
    exact_kl_from_logits,
    kl_estimate,
    make_kl_controller,
)

LN2 = math.log(2)


def test_estimators_by_hand():
    # logr = logp - ref_logp = (0, ln 2, -ln 2)
    logp = torch.tensor([[0.0, 0.0, -LN2]])
    ref = torch.tensor([[0.0, -LN2, 0.0]])
    k1 = kl_estimate(logp, ref, "k1")
    k2 = kl_estimate(logp, ref, "k2")
    k3 = kl_estimate(logp, ref, "k3")
    # k1 = logr
    torch.testing.assert_close(k1, torch.tensor([[0.0, 0.693147, -0.693147]]))
    # k2 = logr^2 / 2 = 0.480453 / 2 = 0.240227
    torch.testing.assert_close(k2, torch.tensor([[0.0, 0.240227, 0.240227]]))
    # k3 = exp(-logr) - 1 + logr: ln2 -> 0.5 - 1 + 0.693147 = 0.193147; -ln2 -> 2 - 1 - 0.693147 = 0.306853
    torch.testing.assert_close(k3, torch.tensor([[0.0, 0.193147, 0.306853]]))


def test_k3_nonnegative_and_unbiased_estimators_agree_in_expectation():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 50, generator=g)
    ref = torch.randn(4, 50, generator=g)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k2") >= 0).all()
    # E_{a~p}[k1] = E_{a~p}[k3] = KL(p || q) exactly when averaged under p over the whole support
    p_logits, q_logits = torch.randn(1, 1, 6, generator=g), torch.randn(1, 1, 6, generator=g)
    lp, lq = torch.log_softmax(p_logits, -1)[0], torch.log_softmax(q_logits, -1)[0]  # (1, 6)
    w = lp.exp()
    exact = exact_kl_from_logits(p_logits, q_logits).item()
    assert (w * kl_estimate(lp, lq, "k1")).sum().item() == pytest.approx(exact, abs=1e-5)
    assert (w * kl_estimate(lp, lq, "k3")).sum().item() == pytest.approx(exact, abs=1e-5)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), "k4")


def test_exact_kl_matches_double_loop():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 5, generator=g) * 2
    b = torch.randn(2, 3, 5, generator=g) * 2
    out = exact_kl_from_logits(a, b)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    for i in range(2):
        for t in range(3):
            za, zb = a[i, t].tolist(), b[i, t].tolist()
            sa, sb = sum(math.exp(z) for z in za), sum(math.exp(z) for z in zb)
            ref = 0.0
            for v in range(5):
                p, q = math.exp(za[v]) / sa, math.exp(zb[v]) / sb
                ref += p * math.log(p / q)
            assert out[i, t].item() == pytest.approx(ref, abs=1e-5)
    assert (out > 0).all()
    # equal logits (and logits shifted by a constant, same softmax) -> 0
    torch.testing.assert_close(exact_kl_from_logits(a, a + 3.0), torch.zeros(2, 3), atol=1e-6, rtol=0)
    assert exact_kl_from_logits(a.bfloat16(), b.bfloat16()).dtype == torch.float32


def test_adaptive_controller_one_and_two_updates():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    # KL 9: err = clip(9/6 - 1 = 0.5) = 0.2; beta = 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512 = 0.100512
    c.update(9.0, 256)
    assert c.value == pytest.approx(0.100512, rel=1e-12)
    # KL 5.4: err = 5.4/6 - 1 = -0.1; beta = 0.100512 * (1 - 0.1 * 100 / 10000) = 0.100512 * 0.999 = 0.100411488
    c.update(5.4, 100)
    assert c.value == pytest.approx(0.100411488, rel=1e-12)
    # clipped below: KL 0 -> err -0.2; 0.100411488 * (1 - 0.2 * 5000/10000) = 0.100411488 * 0.9
    c.update(0.0, 5000)
    assert c.value == pytest.approx(0.0903703392, rel=1e-12)


def test_fixed_controller_never_moves():
    c = FixedKLController(0.05)
    c.update(100.0, 10_000)
    c.update(0.0, 10_000)
    assert c.value == 0.05


def test_state_dict_round_trip_restores_behaviour():
    a = AdaptiveKLController(0.2, target=1.0, horizon=1000)
    a.update(3.0, 64)
    b = AdaptiveKLController(1.0, target=99.0, horizon=7)
    b.load_state_dict(a.state_dict())
    for kl, n in [(0.5, 64), (1.1, 32), (4.0, 128)]:
        a.update(kl, n)
        b.update(kl, n)
        assert a.value == b.value
    f = FixedKLController(0.3)
    f2 = FixedKLController(0.0)
    f2.load_state_dict(f.state_dict())
    assert f2.value == 0.3


def test_make_kl_controller():
    f = make_kl_controller(mode="fixed", coef=0.01, target=1.0, horizon=10)
    a = make_kl_controller(mode="adaptive", coef=0.001, target=1.0, horizon=10_000)
    assert isinstance(f, FixedKLController) and f.value == 0.01
    assert isinstance(a, AdaptiveKLController) and (a.value, a.target, a.horizon) == (0.001, 1.0, 10_000)
    with pytest.raises(ValueError, match="fixed, adaptive"):
        make_kl_controller(mode="pid", coef=0.1, target=1.0, horizon=10)
