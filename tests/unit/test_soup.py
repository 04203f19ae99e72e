"""learner.methods.soup: weight averages of state dicts (SALSA, Chegini et al. 2024)."""
import pytest
import torch

from learner.methods.soup import alpha_soup, weight_soup


def _sd(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(3, 2, generator=g),
        "b": torch.randn(2, generator=g).to(torch.bfloat16),
        "steps": torch.tensor([4, 5], dtype=torch.long),
    }


def test_by_hand():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(3)}
    out = alpha_soup(a, b)
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"].item() == 3 and out["n"].dtype == torch.int64
    # 0.25 * (1, 2) + 0.75 * (3, 6) = (2.5, 5.0)
    torch.testing.assert_close(alpha_soup(a, b, alpha=0.25)["w"], torch.tensor([2.5, 5.0]))
    c = {"w": torch.tensor([-4.0, 1.0]), "n": torch.tensor(3)}
    # uniform over three: ((1 + 3 - 4) / 3, (2 + 6 + 1) / 3) = (0, 3)
    torch.testing.assert_close(weight_soup([a, b, c])["w"], torch.tensor([0.0, 3.0]))


def test_identical_dicts_give_the_dict_and_inputs_are_untouched():
    sd = _sd(0)
    before = {k: v.clone() for k, v in sd.items()}
    out = weight_soup([sd, sd, sd], [0.2, 0.3, 0.5])
    for k in sd:
        assert out[k].dtype == sd[k].dtype
        torch.testing.assert_close(out[k], sd[k], rtol=0, atol=0 if k == "steps" else 1e-6)
    out["w"].add_(1.0)
    torch.testing.assert_close(sd["w"], before["w"])  # the soup is a copy


def test_order_invariance_and_keys_order():
    sds = [_sd(0), _sd(1), _sd(2)]
    for k in sds[0]:
        if k != "steps":
            sds[1][k] = sds[1][k] * 3
    w = [0.1, 0.6, 0.3]
    a = weight_soup(sds, w)
    b = weight_soup([sds[2], sds[0], sds[1]], [w[2], w[0], w[1]])
    assert list(a) == ["w", "b", "steps"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    ref = 0.1 * sds[0]["w"] + 0.6 * sds[1]["w"] + 0.3 * sds[2]["w"]
    torch.testing.assert_close(a["w"], ref)
    assert not torch.allclose(a["w"], weight_soup(sds)["w"])  # the weights matter


def test_errors_name_the_problem():
    a, b = _sd(0), _sd(1)
    with pytest.raises(ValueError, match="sum to 1"):
        weight_soup([a, b], [0.5, 0.6])
    with pytest.raises(ValueError, match="non-negative"):
        weight_soup([a, b], [1.5, -0.5])
    with pytest.raises(ValueError, match="non-negative"):
        alpha_soup(a, b, alpha=1.2)
    with pytest.raises(ValueError, match="2 weights for 3"):
        weight_soup([a, b, a], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one"):
        weight_soup([])
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        weight_soup([a, {k: v for k, v in b.items() if k != "b"}])
    with pytest.raises(ValueError, match=r"'w' has shape \(2, 3\)"):
        weight_soup([a, {**b, "w": torch.zeros(2, 3)}])
    with pytest.raises(ValueError, match="non-float tensor 'steps' differs"):
        weight_soup([a, {**b, "steps": torch.tensor([4, 6])}])
    with pytest.raises(ValueError, match="'w' is floating point"):
        weight_soup([a, {**b, "w": torch.zeros(3, 2, dtype=torch.long)}])
