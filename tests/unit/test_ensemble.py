"""learner.methods.ensemble: Coste et al. 2023 aggregations (mean, WCO, UWO)."""
import pytest
import torch

from learner.methods.ensemble import aggregate


def test_uwo_wco_mean_by_hand_on_1_2_3():
    s = torch.tensor([[1.0, 2.0, 3.0]])  # (B=1, k=3)
    # mean 2; population var = (1 + 0 + 1) / 3 = 2/3; std = sqrt(2/3) = 0.816497
    agg, std = aggregate(s, "mean")
    assert agg.item() == pytest.approx(2.0) and std.item() == pytest.approx(0.816497, abs=1e-6)
    assert aggregate(s, "wco")[0].item() == 1.0
    # UWO lambda 0.1: 2 - 0.1 * 2/3 = 1.933333; lambda 0.5: 2 - 1/3 = 1.666667
    assert aggregate(s, "uwo")[0].item() == pytest.approx(1.933333, abs=1e-6)
    assert aggregate(s, "uwo", uwo_lambda=0.5)[0].item() == pytest.approx(1.666667, abs=1e-6)


def test_shapes_invariants_and_loop_reference():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g)
    mean, std = aggregate(s, "mean")
    wco, _ = aggregate(s, "wco")
    uwo, _ = aggregate(s, "uwo", uwo_lambda=0.3)
    assert mean.shape == wco.shape == uwo.shape == std.shape == (6,)
    assert (wco <= mean).all() and (uwo <= mean).all() and (std >= 0).all()
    for b in range(6):
        row = s[b].tolist()
        mu = sum(row) / 5
        var = sum((r - mu) ** 2 for r in row) / 5
        assert mean[b].item() == pytest.approx(mu, abs=1e-6)
        assert wco[b].item() == pytest.approx(min(row), abs=1e-6)
        assert uwo[b].item() == pytest.approx(mu - 0.3 * var, abs=1e-6)
        assert std[b].item() == pytest.approx(var**0.5, abs=1e-6)


@pytest.mark.parametrize("method", ["mean", "wco", "uwo"])
def test_single_member_is_identity_with_zero_std(method):
    s = torch.tensor([0.5, -1.0, 3.0])  # (B,) -> k = 1
    agg, std = aggregate(s, method)
    torch.testing.assert_close(agg, s)
    assert (std == 0).all()
    agg2, std2 = aggregate(s[:, None], method)
    torch.testing.assert_close(agg2, s)
    assert (std2 == 0).all()


def test_unknown_method_names_the_accepted_ones():
    with pytest.raises(ValueError, match="mean, wco, uwo"):
        aggregate(torch.zeros(2, 3), "median")
