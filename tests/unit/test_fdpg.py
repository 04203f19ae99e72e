"""learner.methods.fdpg: f-DPG (Go et al. 2023) f', targets, log Z, baseline and the surrogate loss."""
import math

import pytest
import torch

from learner.methods.fdpg import (
    DIVERGENCES,
    LOG_T_CLAMP,
    MovingBaseline,
    RunningLogZ,
    f_prime,
    fdpg_loss,
    log_target,
    per_prompt_log_z,
    pseudo_reward,
)

F_OF_T = {  # the generators f(t), written out; f_prime must be their derivative
    "forward_kl": lambda t: -torch.log(t),
    "reverse_kl": lambda t: t * torch.log(t),
    "js": lambda t: t * torch.log(t) - (t + 1) * torch.log((t + 1) / 2),
    "tv": lambda t: (t - 1).abs() / 2,
}


def test_f_prime_by_hand():
    z = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)  # t = 1, t = 2
    # forward: -1/t -> (-1, -0.5); reverse: log t + 1 -> (1, log 2 + 1)
    # js: log(2t/(t+1)) -> (0, log(4/3)); tv: sign(t-1)/2 -> (0, 0.5)
    torch.testing.assert_close(f_prime(z, "forward_kl"), torch.tensor([-1.0, -0.5], dtype=torch.float64))
    torch.testing.assert_close(f_prime(z, "reverse_kl"), torch.tensor([1.0, math.log(2) + 1], dtype=torch.float64))
    torch.testing.assert_close(f_prime(z, "js"), torch.tensor([0.0, math.log(4 / 3)], dtype=torch.float64))
    torch.testing.assert_close(f_prime(z, "tv"), torch.tensor([0.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, js, tv"):
        f_prime(z, "hellinger")


@pytest.mark.parametrize("div", DIVERGENCES)
def test_f_prime_is_the_derivative_of_f(div):
    log_t = torch.tensor([-3.0, -1.2, -0.3, 0.4, 1.0, 2.5], dtype=torch.float64)  # t != 1: TV is not differentiable there
    t = log_t.exp().requires_grad_(True)
    (grad,) = torch.autograd.grad(F_OF_T[div](t).sum(), t)
    torch.testing.assert_close(f_prime(log_t, div), grad)


def test_log_target_rlhf_and_gdc():
    init = torch.tensor([-3.0, -5.0, -1.0])
    out = log_target(init_logp_seq=init, reward=torch.tensor([1.0, -2.0, 0.5]), beta=0.5)
    torch.testing.assert_close(out, torch.tensor([-1.0, -9.0, 0.0]))
    out = log_target(init_logp_seq=init, constraint=torch.tensor([True, False, True]))
    assert out[0] == -3.0 and out[1] == -math.inf and out[2] == -1.0
    for kw in ({}, {"reward": torch.zeros(3), "beta": 1.0, "constraint": torch.ones(3, dtype=torch.bool)}):
        with pytest.raises(ValueError, match="exactly one target"):
            log_target(init_logp_seq=init, **kw)
    with pytest.raises(ValueError, match="both reward and beta"):
        log_target(init_logp_seq=init, reward=torch.zeros(3))
    with pytest.raises(ValueError, match="beta must be > 0"):
        log_target(init_logp_seq=init, reward=torch.zeros(3), beta=0.0)


def _toy(seed=0, K=6):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=torch.float64).requires_grad_(True)  # policy logits over K "sequences"
    q = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)  # proposal
    log_ptilde = torch.randn(K, generator=g, dtype=torch.float64) + 1.0  # unnormalised target
    return g, theta, q, log_ptilde


@pytest.mark.parametrize("div", DIVERGENCES)
@pytest.mark.parametrize("clip", [None, 1.5])
def test_loss_gradient_matches_naive_loop(div, clip):
    g, theta, q, log_ptilde = _toy()
    K, B = theta.numel(), 32
    x = torch.multinomial(q, B, replacement=True, generator=g)  # (B,) samples from q
    log_z, b = 0.7, 0.3
    logpi = torch.log_softmax(theta, 0)
    loss, stats = fdpg_loss(policy_logp_seq=logpi[x], proposal_logp_seq=q.log()[x], log_ptilde=log_ptilde[x],
                            log_z=log_z, baseline=b, divergence=div, clip_weight=clip)
    (grad,) = torch.autograd.grad(loss, theta)
    # naive: -(1/B) sum_i w_i (-f'(t_i) - b) grad log pi(x_i), grad_theta log softmax(theta)[x] = onehot(x) - pi
    pi = logpi.detach().exp()
    ref = torch.zeros(K, dtype=torch.float64)
    prs, ws = [], []
    for xi in x.tolist():
        t = pi[xi] / (log_ptilde[xi].exp() / math.exp(log_z))
        w = pi[xi] / q[xi]
        if clip is not None:
            w = min(w, torch.tensor(clip, dtype=torch.float64))
        pr = -f_prime(t.log().reshape(1), div)[0]
        prs.append(pr.item()), ws.append(float(w))
        ref -= w * (pr - b) * (torch.nn.functional.one_hot(torch.tensor(xi), K).double() - pi) / B
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)
    assert stats["fdpg/pseudo_reward_mean"] == pytest.approx(sum(prs) / B, rel=1e-5, abs=1e-6)
    assert stats["fdpg/weight_mean"] == pytest.approx(sum(ws) / B, rel=1e-5)
    if clip is not None:
        assert max(ws) <= clip


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl", "js"])  # TV's f' jumps at t = 1: rounding picks +-1/2
def test_at_the_target_pseudo_reward_is_constant_and_gradient_zero(div):
    g, _, q, log_ptilde = _toy(seed=1)
    log_z = torch.logsumexp(log_ptilde, 0).item()
    theta = (log_ptilde - log_z).clone().requires_grad_(True)  # pi == p
    x = torch.multinomial(q, 64, replacement=True, generator=g)
    logpi = torch.log_softmax(theta, 0)
    pr, log_t = pseudo_reward(policy_logp_seq=logpi[x], log_ptilde=log_ptilde[x], log_z=log_z, divergence=div)
    assert log_t.abs().max() < 1e-6  # t = 1 everywhere
    b = -f_prime(torch.zeros(()), div).item()  # reverse KL: -1; forward KL: 1; JS: 0
    torch.testing.assert_close(pr, torch.full_like(pr, b), atol=1e-5, rtol=0)
    loss, _ = fdpg_loss(policy_logp_seq=logpi[x], proposal_logp_seq=q.log()[x], log_ptilde=log_ptilde[x],
                        log_z=log_z, baseline=b, divergence=div)
    (grad,) = torch.autograd.grad(loss, theta)
    assert grad.abs().max() < 1e-5


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl", "js"])
def test_exact_expected_gradient_descent_reaches_the_target(div):
    # Enumerate all K outcomes with a uniform proposal: mean over K of K*pi(x)*(...) is the exact E_pi.
    _, theta, _, log_ptilde = _toy(seed=2)
    K = theta.numel()
    x = torch.arange(K)
    log_z = torch.logsumexp(log_ptilde, 0).item()
    p = (log_ptilde - log_z).exp()
    opt = torch.optim.SGD([theta], lr=0.5)
    tv0 = None
    for _ in range(300):
        logpi = torch.log_softmax(theta, 0)
        loss, _ = fdpg_loss(policy_logp_seq=logpi, proposal_logp_seq=torch.full((K,), -math.log(K), dtype=torch.float64),
                            log_ptilde=log_ptilde[x], log_z=log_z, baseline=0.0, divergence=div)
        tv0 = tv0 if tv0 is not None else 0.5 * (logpi.exp() - p).abs().sum().item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tv = 0.5 * (torch.softmax(theta, 0) - p).abs().sum().item()
    assert tv0 > 0.2 and tv < 1e-2


def test_constraint_failures_give_finite_clamped_pseudo_rewards():
    log_ptilde = log_target(init_logp_seq=torch.tensor([-2.0, -3.0]), constraint=torch.tensor([True, False]))
    logpi = torch.tensor([-2.5, -3.0], requires_grad=True)
    expected = {"forward_kl": 0.0, "reverse_kl": -(LOG_T_CLAMP + 1), "js": -math.log(2), "tv": -0.5}
    for div, val in expected.items():
        pr, log_t = pseudo_reward(policy_logp_seq=logpi, log_ptilde=log_ptilde, log_z=0.0, divergence=div)
        assert log_t[1] == LOG_T_CLAMP and pr[1].item() == pytest.approx(val, abs=1e-6)
        loss, _ = fdpg_loss(policy_logp_seq=logpi, proposal_logp_seq=logpi.detach(), log_ptilde=log_ptilde,
                            log_z=0.0, baseline=0.0, divergence=div)
        (grad,) = torch.autograd.grad(loss, logpi)
        assert torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="log_z must be finite"):
        pseudo_reward(policy_logp_seq=logpi, log_ptilde=log_ptilde, log_z=-math.inf, divergence="js")


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_running_log_z_converges_on_a_toy_distribution(momentum):
    g = torch.Generator().manual_seed(0)
    K = 8
    log_ptilde = torch.randn(K, generator=g, dtype=torch.float64) + 2.0
    true_log_z = torch.logsumexp(log_ptilde, 0).item()
    q = torch.softmax(0.5 * torch.randn(K, generator=g, dtype=torch.float64), 0)
    est = RunningLogZ(momentum=momentum)
    for _ in range(200):
        x = torch.multinomial(q, 256, replacement=True, generator=g)
        log_z = est.update(log_ptilde[x], q.log()[x])
    tol = 0.01 if momentum is None else 0.05
    assert abs(log_z - true_log_z) < tol
    assert abs(RunningLogZ(momentum).update(log_ptilde[:1], q.log()[:1]) - true_log_z) > tol  # one sample is not enough
    clone = RunningLogZ()
    clone.load_state_dict(est.state_dict())
    assert clone.log_z == est.log_z and clone.count == est.count == 200 * 256


def test_running_log_z_by_hand_with_zero_weights():
    est = RunningLogZ()
    # weights p~/q: (2, 0, 4) then (6,): cumulative mean 12/4 = 3
    assert est.update(torch.tensor([math.log(2), -math.inf, math.log(4)]), torch.zeros(3)) == pytest.approx(math.log(2))
    assert est.update(torch.tensor([math.log(6)]), torch.zeros(1)) == pytest.approx(math.log(3))
    ema = RunningLogZ(momentum=0.5)
    ema.update(torch.tensor([math.log(2.0)]), torch.zeros(1))  # Z = 2
    assert ema.update(torch.tensor([math.log(4.0)]), torch.zeros(1)) == pytest.approx(math.log(3.0))  # 0.5*2 + 0.5*4


def test_moving_baseline_by_hand():
    b = MovingBaseline(momentum=0.9)
    assert b.value == 0.0
    assert b.update(torch.tensor([1.0, 3.0])) == pytest.approx(2.0)  # first update: the mean
    assert b.update(torch.tensor([12.0])) == pytest.approx(0.9 * 2 + 0.1 * 12)  # 3.0
    c = MovingBaseline()
    c.load_state_dict(b.state_dict())
    assert c.update(3.0) == pytest.approx(b.update(3.0))
    with pytest.raises(ValueError, match="momentum"):
        MovingBaseline(momentum=1.0)


def test_per_prompt_log_z_by_hand_and_on_a_toy_conditional_target():
    # prompt 0: weights (2, 4) -> Z 3; prompt 1: (0, 0, 5) -> 5/3; prompt 2: every sample fails (GDC) -> -inf
    lp = torch.tensor([math.log(2), math.log(4), -math.inf, -math.inf, math.log(5), -math.inf])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    z = per_prompt_log_z(lp, torch.zeros(6), groups)
    assert z[:2].tolist() == pytest.approx([math.log(3)] * 2)
    assert z[2:5].tolist() == pytest.approx([math.log(5 / 3)] * 3)
    assert z[5].item() == -math.inf
    # two contexts with very different true Z_c: per-prompt estimates find each, a pooled Z finds neither
    g = torch.Generator().manual_seed(0)
    K = 6
    log_pt = {0: torch.randn(K, generator=g, dtype=torch.float64), 1: torch.randn(K, generator=g, dtype=torch.float64) + 4.0}
    q = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    x = torch.multinomial(q, 4000, replacement=True, generator=g)
    rows_lp = torch.cat([log_pt[0][x], log_pt[1][x]])
    est = per_prompt_log_z(rows_lp, torch.cat([q.log()[x]] * 2), torch.cat([torch.zeros(4000), torch.ones(4000)]).long())
    for c in (0, 1):
        assert est[c * 4000].item() == pytest.approx(torch.logsumexp(log_pt[c], 0).item(), abs=0.05)
    # a per-row Z goes through the pseudo-reward and the loss like a float one
    logpi = torch.tensor([-3.0, -2.0], requires_grad=True)
    pr_rows, _ = pseudo_reward(policy_logp_seq=logpi, log_ptilde=torch.tensor([-1.0, -1.0]), log_z=torch.tensor([0.5, 0.5]), divergence="js")
    pr_one, _ = pseudo_reward(policy_logp_seq=logpi, log_ptilde=torch.tensor([-1.0, -1.0]), log_z=0.5, divergence="js")
    assert torch.equal(pr_rows, pr_one)
    with pytest.raises(ValueError, match="log_z must be finite"):
        pseudo_reward(policy_logp_seq=logpi, log_ptilde=torch.tensor([-1.0, -1.0]), log_z=torch.tensor([0.5, -math.inf]), divergence="js")
