"""learner.methods.quark: Lu et al. 2022 quantiles, data pool, reward tokens and loss."""
import numpy as np
import pytest
import torch

from learner.methods.quark import DataPool, condition, quantile_tokens, quark_loss, reward_token_strings


def test_quantiles_by_hand():
    assert quantile_tokens([5, 1, 3, 2, 4], 5).tolist() == [4, 0, 2, 1, 3]
    assert quantile_tokens([5, 1, 3, 2, 4, 0], 2).tolist() == [1, 0, 1, 0, 1, 0]
    # ties are ranked in input order: the first 2.0 is lower
    assert quantile_tokens([2.0, 2.0, 1.0, 3.0], 2).tolist() == [0, 1, 0, 1]
    assert quantile_tokens([7.0, 3.0], 1).tolist() == [0, 0]
    assert quantile_tokens([], 5).tolist() == []
    with pytest.raises(ValueError, match="k must be >= 1"):
        quantile_tokens([1.0], 0)


def test_quantiles_balanced_and_ordered():
    rng = np.random.default_rng(0)
    r = rng.normal(size=103)
    q = quantile_tokens(r, 5)
    counts = np.bincount(q, minlength=5)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    for j in range(4):  # every reward in a bin is <= every reward in the next bin
        assert r[q == j].max() < r[q == j + 1].min()


def test_pool_assign_ordering_and_max_size():
    pool = DataPool(max_size=4)
    pool.add(["a", "b", "c"], ["ra", "rb", "rc"], [0.1, 0.9, 0.5])
    assert len(pool) == 3
    assert [s.quantile for s in pool.assign(3)] == [0, 2, 1]
    pool.add(["d", "e"], ["rd", "re"], np.array([0.3, 0.0]))
    assert len(pool) == 4  # "a" (oldest) dropped
    out = pool.assign(2)
    assert [s.prompt for s in out] == ["b", "c", "d", "e"]
    assert [s.response for s in out] == ["rb", "rc", "rd", "re"]
    assert [s.reward for s in out] == [0.9, 0.5, 0.3, 0.0]
    assert [s.quantile for s in out] == [1, 1, 0, 0]
    p, r, rew, qt = out[0]  # plain tuple unpacking works
    assert (p, r, rew, qt) == ("b", "rb", 0.9, 1)
    with pytest.raises(ValueError, match="differ in length"):
        pool.add(["x"], ["y", "z"], [1.0])


def test_pool_state_dict_round_trip():
    pool = DataPool()
    pool.add([[1, 2], [3]], [[4], [5, 6]], [1.0, -1.0])
    clone = DataPool(max_size=1)
    clone.load_state_dict(pool.state_dict())
    assert clone.max_size is None and len(clone) == 2
    assert clone.assign(2) == pool.assign(2)
    pool.add([[7]], [[8]], [0.0])
    assert len(clone) == 2  # state_dict is a copy, not a view


def test_reward_tokens_and_condition():
    assert reward_token_strings(3) == ["<|rq0|>", "<|rq1|>", "<|rq2|>"]
    assert len(set(reward_token_strings(5))) == 5
    assert condition([10, 11, 12], 99) == [99, 10, 11, 12]
    assert condition((), 7) == [7]


def _naive(logits, ref_logits, tokens, mask, kl_coef, entropy_coef):
    nll, kl, ent, n = 0.0, 0.0, 0.0, 0
    B, T, V = logits.shape
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            p = torch.softmax(logits[b, t].double(), 0)
            pr = torch.softmax(ref_logits[b, t].double(), 0)
            nll += -p[tokens[b, t]].log().item()
            kl += sum(p[v].item() * (p[v].log() - pr[v].log()).item() for v in range(V))
            ent += -sum(p[v].item() * p[v].log().item() for v in range(V))
            n += 1
    nll, kl, ent = nll / n, kl / n, ent / n
    return nll + kl_coef * kl - entropy_coef * ent, nll, kl, ent


def _batch(seed=0, B=3, T=5, V=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    ref_logits = torch.randn(B, T, V, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return logits, ref_logits, tokens, mask


def test_loss_matches_naive_loop():
    logits, ref_logits, tokens, mask = _batch()
    loss, stats = quark_loss(logits=logits, ref_logits=ref_logits, tokens=tokens, mask=mask, kl_coef=0.2, entropy_coef=0.3)
    total, nll, kl, ent = _naive(logits, ref_logits, tokens, mask, 0.2, 0.3)
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert stats["loss/nll"] == pytest.approx(nll, rel=1e-5)
    assert stats["loss/kl"] == pytest.approx(kl, rel=1e-5) and kl > 0
    assert stats["loss/entropy"] == pytest.approx(ent, rel=1e-5)


def test_loss_by_hand_uniform_policy():
    # V = 4, uniform policy, reference = policy: NLL = log 4, KL = 0, H = log 4
    logits = torch.zeros(1, 2, 4)
    loss, stats = quark_loss(logits=logits, ref_logits=logits.clone(), tokens=torch.tensor([[1, 3]]), mask=torch.ones(1, 2))
    log4 = float(np.log(4))
    assert stats["loss/nll"] == pytest.approx(log4) and stats["loss/kl"] == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(log4 - 0.06 * log4)  # default coefs: kl 0.05, entropy 0.06


def test_masked_positions_do_not_matter_and_ref_gets_no_grad():
    logits, ref_logits, tokens, mask = _batch(seed=1)
    logits.requires_grad_(True)
    ref_logits.requires_grad_(True)
    loss, _ = quark_loss(logits=logits, ref_logits=ref_logits, tokens=tokens, mask=mask)
    loss.backward()
    off = ~mask.bool()
    assert (logits.grad[off] == 0).all() and (logits.grad[mask.bool()] != 0).any()
    assert ref_logits.grad is None
    garbage = _batch(seed=2)
    l2 = torch.where(off[..., None], 1e3 * garbage[0], logits.detach())
    r2 = torch.where(off[..., None], garbage[1], ref_logits.detach())
    t2 = torch.where(off, garbage[2], tokens)
    loss2, _ = quark_loss(logits=l2, ref_logits=r2, tokens=t2, mask=mask)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_kl_excludes_the_reward_tokens_as_the_official_code_does():
    """GXimingLu/Quark main.py:244,252: the policy's logits sliced to the ordinary vocabulary, then
    KLDivLoss(log_softmax(ref), softmax(policy)) summed over it; the reference may lack the reward tokens."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    V, K = 7, 3
    logits = torch.randn(2, 4, V + K)  # the expanded policy
    ref_v = torch.randn(2, 4, V)  # an SFT model or a soup: no reward tokens
    tokens, mask = torch.randint(0, V, (2, 4)), torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    loss, stats = quark_loss(logits=logits, ref_logits=ref_v, tokens=tokens, mask=mask, kl_coef=1.0, entropy_coef=0.0, n_base=V)
    official = torch.nn.KLDivLoss(reduction="none")(F.log_softmax(ref_v, -1), F.softmax(logits[:, :, :V], -1)).sum(-1)  # (2, 4)
    assert stats["loss/kl"] == pytest.approx(float((official * mask).sum() / mask.sum()), rel=1e-5)
    nll = -(torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1))  # over all V + K logits
    assert stats["loss/nll"] == pytest.approx(float((nll * mask).sum() / mask.sum()), rel=1e-5)
    # a reference with the reward tokens (a copy of the expanded start policy) is sliced the same way
    ref_vk = torch.cat([ref_v, torch.randn(2, 4, K) + 5.0], -1)
    _, same = quark_loss(logits=logits, ref_logits=ref_vk, tokens=tokens, mask=mask, n_base=V)
    assert same["loss/kl"] == pytest.approx(stats["loss/kl"], rel=1e-5)
    with pytest.raises(ValueError, match="fewer than the 7 ordinary tokens"):
        quark_loss(logits=logits, ref_logits=ref_v[..., :5], tokens=tokens, mask=mask, n_base=V)


def test_quark_with_an_sft_or_soup_reference_trains(tiny_assets, tiny_cfg, tmp_path):
    """reference.kind sft / soup: the KL reference has the base vocabulary (V), the policy V + K reward tokens."""
    from learner.config import load_config
    from services.driver.train import train
    from tasks.imdb.build import prepare

    sets = [f"data_dir={tiny_cfg.data_dir}", f"runs_dir={tmp_path}", "train.threads=1", "runtime.mode=local", "runtime.engine=transformers",
            "algorithm=quark", "quark.batch_size=8", "quark.minibatch_size=4", "quark.steps_per_iteration=2", "reference.sft_tokens=24000",  # not the SALSA test's stage (it checks a missing one)
            "train.iterations=2"]
    for kind in ("sft", "soup"):
        cfg = load_config("tiny", [*sets, f"reference.kind={kind}"])
        prepare(cfg)
        summary = train(cfg, tmp_path / kind, progress=False)
        assert summary["eval/kl_from_init_k3"] >= 0 and np.isfinite(summary["quark/pool_size"])
