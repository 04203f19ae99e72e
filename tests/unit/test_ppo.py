"""learner.methods.ppo: per-token rewards, GAE, clipped policy and value losses."""
import math

import pytest
import torch

from learner.methods.ppo import gae, per_token_rewards, policy_loss, value_loss


def _random_mask(g, B, T):
    # contiguous valid spans, some right-padded, some left-padded, one row empty
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B - 1):
        n = int(torch.randint(1, T + 1, (1,), generator=g))
        if b % 2:
            mask[b, :n] = 1
        else:
            mask[b, T - n:] = 1
    return mask


def _naive_rewards(scores, kl, mask, beta):
    B, T = kl.shape
    r = torch.zeros(B, T)
    for b in range(B):
        valid = [t for t in range(T) if mask[b, t]]
        for t in valid:
            r[b, t] = -beta * kl[b, t]
        if valid:
            r[b, valid[-1]] += scores[b]
    return r


def _naive_gae(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv, ret = torch.zeros(B, T), torch.zeros(B, T)
    for b in range(B):
        valid = [t for t in range(T) if mask[b, t]]
        last = 0.0
        for i in reversed(range(len(valid))):
            t = valid[i]
            nv = values[b, valid[i + 1]].item() if i + 1 < len(valid) else 0.0
            delta = rewards[b, t].item() + gamma * nv - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
            ret[b, t] = last + values[b, t].item()
    return adv, ret


def test_per_token_rewards_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.3, 1e6], [1e6, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]])
    r = per_token_rewards(scores=torch.tensor([5.0, -1.0]), kl=kl, mask=mask, beta=0.5)
    # row 0: -0.5*(0.1, 0.2, 0.3) with +5 at t=2 -> (-0.05, -0.1, 4.85, 0)
    # row 1: only t=1 valid -> -0.5*0.4 - 1 = -1.2
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, 4.85, 0.0], [0.0, -1.2, 0.0, 0.0]]))


def test_per_token_rewards_match_loop():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 7
    mask = _random_mask(g, B, T)
    kl = torch.randn(B, T, generator=g)
    scores = torch.randn(B, generator=g)
    r = per_token_rewards(scores=scores, kl=kl, mask=mask, beta=0.1)
    torch.testing.assert_close(r, _naive_rewards(scores, kl, mask, 0.1))
    assert (r[B - 1] == 0).all()  # empty row gets no score


def test_gae_three_steps_by_hand():
    # gamma 0.9, lam 0.8 (gamma*lam = 0.72); r = (1, 0, 2), V = (0.5, 1.0, 1.5), V after the end = 0
    # t=2: delta = 2 + 0 - 1.5 = 0.5;               A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35;        A1 = 0.35 + 0.72*0.5 = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4;         A0 = 1.4 + 0.72*0.71 = 1.9112
    # returns = A + V = (2.4112, 1.71, 2.0)
    r, v = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]])
    adv, ret = gae(rewards=r, values=v, mask=torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0]]))
    # same numbers when the sequence is right-padded or left-padded with garbage
    big = 1e4
    r_pad = torch.tensor([[1.0, 0.0, 2.0, big, big], [big, big, 1.0, 0.0, 2.0]])
    v_pad = torch.tensor([[0.5, 1.0, 1.5, big, -big], [-big, big, 0.5, 1.0, 1.5]])
    m_pad = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    adv_p, ret_p = gae(rewards=r_pad, values=v_pad, mask=m_pad, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv_p[0, :3], adv[0])
    torch.testing.assert_close(adv_p[1, 2:], adv[0])
    torch.testing.assert_close(ret_p[1, 2:], ret[0])
    assert (adv_p[m_pad == 0] == 0).all() and (ret_p[m_pad == 0] == 0).all()


def test_gae_matches_loop_and_is_detached():
    g = torch.Generator().manual_seed(1)
    B, T = 6, 8
    mask = _random_mask(g, B, T)
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g, requires_grad=True)
    adv, ret = gae(rewards=rewards, values=values, mask=mask, gamma=0.95, lam=0.9)
    adv_ref, ret_ref = _naive_gae(rewards, values.detach(), mask, 0.95, 0.9)
    torch.testing.assert_close(adv, adv_ref)
    torch.testing.assert_close(ret, ret_ref)
    assert not adv.requires_grad and not ret.requires_grad
    # lam = 1, gamma = 1: A_t = sum of future rewards - V_t (Monte Carlo)
    adv1, ret1 = gae(rewards=rewards, values=values, mask=mask, gamma=1.0, lam=1.0)
    mc = torch.where(mask.bool(), rewards, 0).flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(ret1, torch.where(mask.bool(), mc, 0.0))


def test_policy_loss_by_hand_with_clipping():
    # tokens: (A=1, rho=1.5), (A=-1, rho=0.5), (A=2, rho=1.0); eps = 0.2
    # tok0: max(-1.5, -1.2) = -1.2 (clipped); tok1: max(0.5, 0.8) = 0.8 (clipped); tok2: -2
    # loss = (-1.2 + 0.8 - 2) / 3 = -0.8; clipfrac = 2/3
    # approx_kl = 0.5 * (ln1.5^2 + ln0.5^2 + 0) / 3 = 0.5 * (0.164402 + 0.480453) / 3 = 0.107476
    old = torch.zeros(1, 4)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0, 50.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 2.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2)
    assert loss.item() == pytest.approx(-0.8, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(2 / 3)
    assert stats["approx_kl"] == pytest.approx(0.107476, abs=1e-6)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert all(isinstance(v, float) for v in stats.values())
    loss.backward()
    # clipped tokens and the masked token get no gradient; tok2: d(-A*rho/3)/dlogp = -2*1/3
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -2 / 3, 0.0]]))


def test_value_loss_by_hand():
    # tok0: v=2, old=1, R=1.5 -> v_clip=1.2; (0.5^2=0.25, 0.3^2=0.09) -> 0.25, not clipped
    # tok1: v=2, old=1, R=3   -> v_clip=1.2; (1.0, 1.8^2=3.24)        -> 3.24, clipped
    # loss = 0.5 * (0.25 + 3.24) / 2 = 0.8725; vf_clipfrac = 1/2
    v = torch.tensor([[2.0, 2.0, 1e3]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, -1e3]])
    R = torch.tensor([[1.5, 3.0, 5e3]])
    loss, stats = value_loss(values=v, old_values=old, returns=R, mask=torch.tensor([[1, 1, 0]]), clip=0.2)
    assert loss.item() == pytest.approx(0.8725, abs=1e-6)
    assert stats["vf_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    # tok0: d/dv 0.5*(v-R)^2/2 = (2-1.5)/2 = 0.25; tok1: clipped term is constant in v -> 0
    torch.testing.assert_close(v.grad, torch.tensor([[0.25, 0.0, 0.0]]))


def test_losses_ignore_masked_positions():
    g = torch.Generator().manual_seed(2)
    B, T = 4, 6
    mask = _random_mask(g, B, T)
    mask[B - 1, :2] = 1  # no empty row here
    logp, old, adv = (torch.randn(B, T, generator=g) * 0.3 for _ in range(3))
    v, ov, R = (torch.randn(B, T, generator=g) for _ in range(3))
    junk = lambda x, val=80.0: torch.where(mask.bool(), x, torch.full_like(x, val))  # noqa: E731
    l1, s1 = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2)
    l2, s2 = policy_loss(logp=junk(logp), old_logp=junk(old, -80.0), advantages=junk(adv), mask=mask, clip=0.2)
    assert l1 == l2 and s1 == s2
    m1, t1 = value_loss(values=v, old_values=ov, returns=R, mask=mask, clip=0.2)
    m2, t2 = value_loss(values=junk(v), old_values=junk(ov, -80.0), returns=junk(R), mask=mask, clip=0.2)
    assert m1 == m2 and t1 == t2
    k = torch.randn(B, T, generator=g)
    s = torch.randn(B, generator=g)
    torch.testing.assert_close(
        per_token_rewards(scores=s, kl=k, mask=mask, beta=0.1),
        per_token_rewards(scores=s, kl=junk(k), mask=mask, beta=0.1),
    )


def test_truncated_is_weights_by_hand():
    from learner.methods.ppo import truncated_is_weights

    old = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    beh = torch.tensor([[-1.0, -1.0, -5.0, 900.0]])  # pi_old/mu: 1, e^-1, e^2 (capped at 2), masked (would overflow)
    mask = torch.tensor([[1, 1, 1, 0]])
    w, st = truncated_is_weights(old_logp=old, behaviour_logp=beh, mask=mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, math.exp(-1.0), 2.0, 0.0]]))
    assert st["is_clipfrac"] == pytest.approx(1 / 3) and st["is_weight_mean"] == pytest.approx((1 + math.exp(-1) + 2) / 3)
    w_huge, _ = truncated_is_weights(old_logp=torch.tensor([[1e4]]), behaviour_logp=torch.tensor([[-1e4]]), mask=torch.ones(1, 1), cap=2.0)
    assert torch.isfinite(w_huge).all() and float(w_huge) == 2.0
    # mu = 0 (log -inf) gives the cap; an unknown (NaN) behaviour log-prob gives weight 0, never a NaN loss
    w_odd, _ = truncated_is_weights(old_logp=torch.tensor([[-1.0, -1.0]]), behaviour_logp=torch.tensor([[-math.inf, math.nan]]),
                                    mask=torch.ones(1, 2), cap=2.0)
    assert w_odd.tolist() == [[2.0, 0.0]]
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(old_logp=old, behaviour_logp=beh, mask=mask, cap=0.0)


def test_policy_loss_weights_scale_each_token_and_ones_change_nothing():
    g = torch.Generator().manual_seed(3)
    B, T = 4, 6
    logp, old, adv = (torch.randn(B, T, generator=g) * 0.3 for _ in range(3))
    mask = _random_mask(g, B, T)
    plain, _ = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2)
    ones, _ = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2, weights=torch.ones(B, T))
    assert float(plain) == float(ones)
    w = torch.rand(B, T, generator=g) * 2
    weighted, _ = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2, weights=w)
    ratio = torch.exp(logp - old)
    per = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)) * w
    valid = mask.bool()
    assert float(weighted) == pytest.approx(float(per[valid].mean()), rel=1e-6)
