"""The critic-free estimators and policy-loss variants (learner/methods/advantages.py) against hand-computed numbers and
naive loops, in the manner of veRL's tests/trainer/ppo/test_core_algos_on_cpu.py."""
import math
from collections import defaultdict

import pytest
import torch

from learner.methods.advantages import (aggregate_loss, discounted_returns, grpo_advantages,
                                        informative_groups, reinforce_pp_advantages, reinforce_pp_baseline_advantages,
                                        rloo_advantages)
from learner.methods.ppo import policy_loss

S = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 0.5])
G = torch.tensor([0, 0, 0, 1, 1, 2])  # a group of three, one of two identical scores, one of one


def test_grpo_by_hand_identical_scores_and_a_group_of_one_give_zero():
    a = grpo_advantages(S, G, eps=0.0)
    # group 0: mean 2, unbiased std 1 -> -1, 0, 1; group 1: identical -> 0; group 2: one sample -> 0
    assert a.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    dr = grpo_advantages(S, G, scale_by_std=False)  # Dr. GRPO: no std
    assert dr.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    s2 = torch.tensor([0.0, 4.0, 1.0, 1.0])
    g2 = torch.tensor([7, 7, 3, 3])
    assert grpo_advantages(s2, g2, scale_by_std=False).tolist() == pytest.approx([-2.0, 2.0, 0.0, 0.0])
    assert grpo_advantages(s2, g2, eps=0.0).tolist() == pytest.approx([-2 / math.sqrt(8), 2 / math.sqrt(8), 0.0, 0.0])


def _naive_group(scores, groups):
    d = defaultdict(list)
    for i, g in enumerate(groups.tolist()):
        d[g].append(i)
    return d


def test_grpo_and_rloo_match_naive_loops_on_random_batches():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        B = int(torch.randint(2, 40, (1,), generator=gen))
        s = torch.randn(B, generator=gen, dtype=torch.float64) * 3
        g = torch.randint(0, 6, (B,), generator=gen) * 11 - 5  # arbitrary, unsorted, negative ids
        want_grpo, want_rloo = torch.zeros(B), torch.zeros(B)
        for ids in _naive_group(s, g).values():
            if len(ids) < 2:
                continue
            vals = s[ids]
            m, sd = vals.mean(), vals.std()  # torch's std is the unbiased one, as veRL's
            for i in ids:
                want_grpo[i] = float((s[i] - m) / (sd + 1e-6))
                others = [s[j] for j in ids if j != i]
                want_rloo[i] = float(s[i] - sum(others) / len(others))  # the baseline excludes the sample itself
        torch.testing.assert_close(grpo_advantages(s, g), want_grpo, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rloo_advantages(s, g), want_rloo, rtol=1e-5, atol=1e-5)


def test_rloo_by_hand_and_its_veRL_form():
    a = rloo_advantages(S, G)
    # group 0: 1 - (2+3)/2 = -1.5, 2 - 2 = 0, 3 - 1.5 = 1.5; identical -> 0; one sample -> 0
    assert a.tolist() == pytest.approx([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    n = 3  # veRL: s * n/(n-1) - mean * n/(n-1)
    assert a[:3].tolist() == pytest.approx([(x - 2.0) * n / (n - 1) for x in (1.0, 2.0, 3.0)])


def test_bad_scores_are_refused_with_what_is_wrong():
    with pytest.raises(ValueError, match="non-finite"):
        grpo_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        rloo_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))


def test_discounted_returns_and_reinforce_pp_against_a_loop():
    r = torch.tensor([[0.1, -0.2, 1.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # left and right padding
    g = discounted_returns(r, mask, gamma=0.5)
    want = torch.zeros_like(r)
    for b in range(2):
        run = 0.0
        for t in reversed(range(4)):
            if mask[b, t]:
                run = float(r[b, t]) + 0.5 * run
                want[b, t] = run
    torch.testing.assert_close(g, want)
    assert g[0].tolist() == pytest.approx([0.1 - 0.1 + 0.25, -0.2 + 0.5, 1.0, 0.0])
    a = reinforce_pp_advantages(r, mask, gamma=1.0)
    vals = discounted_returns(r, mask, 1.0)[mask.bool()]
    torch.testing.assert_close(a[mask.bool()], (vals - vals.mean()) / torch.sqrt(vals.var() + 1e-8))
    assert (a[~mask.bool()] == 0).all()


def test_reinforce_pp_with_a_group_baseline_is_centred_then_whitened_over_tokens():
    s = torch.tensor([1.0, 3.0, 2.0, 2.0])
    g = torch.tensor([0, 0, 1, 1])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
    a = reinforce_pp_baseline_advantages(s, g, mask)
    tok = torch.tensor([-1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # centred score on each valid token, row by row
    torch.testing.assert_close(a[mask.bool()], (tok - tok.mean()) / torch.sqrt(tok.var() + 1e-8))
    assert (a[~mask.bool()] == 0).all()


def test_informative_groups_drop_groups_of_identical_scores():
    keep = informative_groups(S, G)
    assert keep.tolist() == [True, True, True, False, False, False]  # identical pair and the single sample dropped
    assert informative_groups(torch.tensor([1.0, 1.0 + 1e-9]), torch.tensor([0, 0]), atol=1e-6).tolist() == [False, False]


def test_loss_aggregations_by_hand_and_dr_grpos_normaliser_is_a_constant():
    x = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert float(aggregate_loss(x, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(aggregate_loss(x, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
    assert float(aggregate_loss(x, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate_loss(x, mask, "seq-mean-token-sum-norm")) == pytest.approx((6 / 4 + 4 / 4) / 2)
    assert float(aggregate_loss(x, mask, "seq-mean-token-sum-norm", norm_len=10)) == pytest.approx((0.6 + 0.4) / 2)
    # the normaliser does not depend on a sequence's length: doubling one sequence's tokens doubles its term exactly
    longer = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 4.0, 0.0, 0.0]])
    m2 = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    d = float(aggregate_loss(longer, m2, "seq-mean-token-sum-norm")) - float(aggregate_loss(x, mask, "seq-mean-token-sum-norm"))
    assert d == pytest.approx(4 / 4 / 2)
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-sum"):
        aggregate_loss(x, mask, "sum")


def _batch(seed=0, B=4, T=5):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen) * 2
    logp = (old + torch.randn(B, T, generator=gen) * 0.3).requires_grad_(True)
    adv = torch.randn(B, 1, generator=gen).expand(B, T).contiguous()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, :1] = 0
    return logp, old, adv, mask


def test_the_token_clip_is_the_naive_loop_and_clip_high_equal_to_clip_changes_nothing():
    logp, old, adv, mask = _batch()
    a, sa = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2)
    b, sb = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2, clip_high=0.2)
    terms = []
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[i, t]:
                r = torch.exp(logp[i, t] - old[i, t])
                terms.append(torch.maximum(-adv[i, t] * r, -adv[i, t] * torch.clamp(r, 0.8, 1.2)))
    naive = torch.stack(terms).mean()
    torch.testing.assert_close(a, naive)
    assert torch.equal(a, b) and sa == sb
    ga, = torch.autograd.grad(a, logp)
    gn, = torch.autograd.grad(naive, logp)
    torch.testing.assert_close(ga, gn)


def test_clip_higher_lets_a_positive_advantage_ratio_rise_further():
    logp = torch.log(torch.tensor([[1.25]])).requires_grad_(True)  # ratio 1.25 against pi_old = 1
    old, adv, mask = torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1)
    sym, _ = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2)
    hi, _ = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.2, clip_high=0.28)
    assert sym.item() == pytest.approx(-1.2) and hi.item() == pytest.approx(-1.25)  # clipped at 1.2 / not clipped
    assert torch.autograd.grad(sym, logp)[0].item() == 0.0 and torch.autograd.grad(hi, logp)[0].item() != 0.0


def test_gspo_ratio_is_the_geometric_mean_per_sequence_clipped_per_sequence():
    logp, old, adv, mask = _batch(seed=1)
    loss, st = policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.1,
                                   level="sequence", agg="seq-mean-token-mean")
    # by hand: s_i = exp(mean over valid t of (logp - old)); loss_i = max(-A s, -A clip(s)); mean over sequences
    want, grads = [], torch.zeros_like(logp)
    for b in range(logp.shape[0]):
        v = mask[b].bool()
        s = torch.exp((logp[b, v] - old[b, v]).mean())
        A = adv[b, 0]
        want.append(torch.maximum(-A * s, -A * torch.clamp(s, 0.9, 1.1)))
    ref = torch.stack(want).mean()
    torch.testing.assert_close(loss, ref)
    # the gradient is that of the sequence form (each token: s_i * d log pi_t / |y_i|, unless clipped)
    g, = torch.autograd.grad(loss, logp, retain_graph=True)
    g_ref, = torch.autograd.grad(ref, logp)
    torch.testing.assert_close(g, g_ref)
    assert 0 <= st["clipfrac"] <= 1
    with pytest.raises(ValueError, match="token, sequence"):
        policy_loss(logp=logp, old_logp=old, advantages=adv, mask=mask, clip=0.1, level="seq")
