"""learner.methods.logprobs: hand-computed values, naive references and masking invariants."""
import math

import pytest
import torch

from learner.methods.logprobs import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)


def test_logprobs_and_entropy_by_hand():
    # logits (0, ln 2, ln 3) -> p = (1, 2, 3) / 6
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)]]])  # (1, 1, 3)
    lp = logprobs_from_logits(logits, torch.tensor([[2]]))
    assert lp.shape == (1, 1)
    assert lp.item() == pytest.approx(math.log(0.5), abs=1e-6)
    # H = 1/6 ln 6 + 1/3 ln 3 + 1/2 ln 2 = 0.298627 + 0.366204 + 0.346574 = 1.011404
    assert entropy_from_logits(logits).item() == pytest.approx(1.011404, abs=1e-5)
    # uniform over V = 7 -> H = ln 7
    assert entropy_from_logits(torch.zeros(1, 1, 7)).item() == pytest.approx(math.log(7), abs=1e-6)


def test_logprobs_match_log_softmax_and_are_float32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), ref)
    ent_ref = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), ent_ref)
    out = logprobs_from_logits(logits.to(torch.bfloat16), tokens)
    assert out.dtype == torch.float32 and entropy_from_logits(logits.half()).dtype == torch.float32


def test_masked_reductions_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert masked_sum(x, m).item() == 6.0
    assert masked_mean(x, m).item() == 2.0
    # deviations (-1, 0, 1): unbiased (1 + 0 + 1) / 2 = 1; population 2/3
    assert masked_var(x, m).item() == pytest.approx(1.0)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(2 / 3)
    # along a dim: rows (1 + 2) and (5)
    y = torch.tensor([[1.0, 2.0, 9.0], [9.0, 9.0, 5.0]])
    my = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(masked_sum(y, my, dim=1), torch.tensor([3.0, 5.0]))
    torch.testing.assert_close(masked_mean(y, my, dim=1), torch.tensor([1.5, 5.0]))
    # empty mask: mean 0 (not NaN)
    assert masked_mean(y, torch.zeros_like(my)).item() == 0.0


def _naive_whiten(x, m, shift_mean, eps):
    vals = [x[i, j].item() for i in range(x.shape[0]) for j in range(x.shape[1]) if m[i, j]]
    n = len(vals)
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if m[i, j]:
                out[i, j] = (x[i, j] - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)
    return out


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_loop(shift_mean):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g) * 3 + 2
    m = (torch.rand(4, 6, generator=g) > 0.3).long()
    out = masked_whiten(x, m, shift_mean=shift_mean)
    torch.testing.assert_close(out, _naive_whiten(x, m, shift_mean, 1e-8), rtol=1e-5, atol=1e-5)
    assert (out[m == 0] == 0).all()
    if shift_mean:
        assert masked_mean(out, m).abs().item() < 1e-5
        assert masked_var(out, m).item() == pytest.approx(1.0, abs=1e-4)


def test_masked_positions_change_nothing():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, generator=g)
    m = (torch.rand(3, 5, generator=g) > 0.4).float()
    garbage = torch.where(m.bool(), x, torch.full_like(x, 1e30))
    inf = torch.where(m.bool(), x, torch.full_like(x, float("inf")))
    for other in (garbage, inf):
        assert masked_sum(other, m) == masked_sum(x, m)
        assert masked_mean(other, m) == masked_mean(x, m)
        assert masked_var(other, m) == masked_var(x, m)
        torch.testing.assert_close(masked_whiten(other, m), masked_whiten(x, m))
