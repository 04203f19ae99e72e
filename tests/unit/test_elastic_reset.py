"""learner.methods.elastic_reset: the EMA and reset rule of Noukhovitch et al. 2023, checked against a hand-run."""
import copy

import pytest
import torch
from torch import nn

from learner.methods.elastic_reset import ElasticReset

ETA = 0.9


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.value_head = nn.Linear(4, 1)

    def forward(self, x):
        return self.value_head(torch.tanh(self.body(x))).sum()


class Tied(nn.Module):
    """Input embedding and output head share one Parameter (as in the tied-embedding policy)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.value_head = nn.Linear(3, 1)

    def forward(self, tok):
        h = self.embed(tok)
        return self.head(h).logsumexp(-1).sum() + self.value_head(h).sum()


def _snap(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(model, opt, steps, er=None, seed=0):
    """k SGD steps; returns the parameter snapshots theta_1..theta_k."""
    g = torch.Generator().manual_seed(seed)
    snaps = []
    for _ in range(steps):
        x = torch.randn(2, 3, generator=g) if isinstance(model, Tiny) else torch.randint(0, 5, (4,), generator=g)
        opt.zero_grad()
        model(x).backward()
        opt.step()
        if er is not None:
            er.update(model)
        snaps.append(_snap(model))
    return snaps


def _hand_ema(theta0, snaps, names):
    # ema_0 = theta_0; ema_k = eta * ema_{k-1} + (1 - eta) * theta_k
    ema = {n: theta0[n].clone() for n in names}
    for s in snaps:
        ema = {n: ETA * ema[n] + (1 - ETA) * s[n] for n in names}
    return ema


def _setup(opt_cls=torch.optim.SGD, **opt_kw):
    torch.manual_seed(0)
    model = Tiny()
    opt = opt_cls(model.parameters(), lr=0.1, **opt_kw)
    er = ElasticReset(model, eta=ETA)
    return model, opt, er


def test_reset_applies_hand_run_ema_and_restores_theta0_in_ema():
    model, opt, er = _setup(momentum=0.9)
    theta0 = _snap(model)
    snaps = _train(model, opt, 3, er)
    body = ["body.weight", "body.bias"]
    expected = _hand_ema(theta0, snaps, body)
    # the EMA really moved, and away from the last iterate too (otherwise the test proves nothing)
    assert not torch.allclose(expected["body.weight"], theta0["body.weight"])
    assert not torch.allclose(expected["body.weight"], snaps[-1]["body.weight"])
    assert set(er.ema_state_dict()) == set(body) and er.n_updates == 3
    for n in body:
        torch.testing.assert_close(er.ema_state_dict()[n], expected[n], rtol=0, atol=1e-6)
    assert len(opt.state) > 0
    er.reset(model, optimizer=opt, reset_optimizer=False)
    after = _snap(model)
    for n in body:
        torch.testing.assert_close(after[n], expected[n], rtol=0, atol=1e-6)  # theta <- theta_ema
        assert torch.equal(er.ema_state_dict()[n], theta0[n])  # theta_ema <- theta_0
    for n in ("value_head.weight", "value_head.bias"):
        assert torch.equal(after[n], snaps[-1][n])  # value head untouched by default
    assert len(opt.state) > 0  # optimizer kept when not asked
    assert er.n_resets == 1


def test_reset_keeps_the_optimizer_by_default_and_clears_it_and_the_value_head_when_asked():
    model, opt, er = _setup(torch.optim.Adam)
    theta0 = _snap(model)
    _train(model, opt, 3, er)
    assert not torch.equal(model.value_head.weight, theta0["value_head.weight"])
    kept = {k: {n: v.clone() for n, v in st.items()} for k, st in opt.state.items()}
    er.reset(model, optimizer=opt)  # the authors keep the optimiser state (reset_opt False): the default
    assert len(opt.state) == len(kept) and all(torch.equal(opt.state[k]["exp_avg"], v["exp_avg"]) for k, v in kept.items())
    er.reset(model, optimizer=opt, reset_optimizer=True, reset_value_head=True)
    assert len(opt.state) == 0 and isinstance(opt.state, dict)
    assert torch.equal(model.value_head.weight.detach(), theta0["value_head.weight"])
    assert torch.equal(model.value_head.bias.detach(), theta0["value_head.bias"])
    _train(model, opt, 1)  # Adam rebuilds its state from scratch after the clear
    assert opt.state[model.body.weight]["step"].item() == 1


def test_second_cycle_starts_from_theta0():
    model, opt, er = _setup()
    theta0 = _snap(model)
    _train(model, opt, 2, er)
    er.reset(model)
    snaps = _train(model, opt, 2, er, seed=5)
    expected = _hand_ema(theta0, snaps, ["body.weight", "body.bias"])
    er.reset(model)
    torch.testing.assert_close(model.body.weight.detach(), expected["body.weight"], rtol=0, atol=1e-6)
    assert er.n_updates == 4 and er.n_resets == 2


def test_custom_exclude_tracks_value_head():
    torch.manual_seed(0)
    model = Tiny()
    er = ElasticReset(model, eta=ETA, exclude=lambda n: False)
    assert "value_head.weight" in er.ema_state_dict()


def test_state_dict_round_trip_restores_behaviour():
    model, opt, er = _setup()
    _train(model, opt, 2, er)
    model2 = copy.deepcopy(model)
    er2 = ElasticReset(model2, eta=0.5)  # different theta_0, eta and EMA until loaded
    er2.load_state_dict(er.state_dict())
    assert (er2.eta, er2.n_updates, er2.n_resets) == (ETA, 2, 0)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    _train(model, opt, 2, er, seed=3)
    _train(model2, opt2, 2, er2, seed=3)
    er.reset(model, reset_value_head=True)
    er2.reset(model2, reset_value_head=True)
    for (n, p), (_, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(p, p2), n
    for n, t in er.ema_state_dict().items():
        assert torch.equal(t, er2.ema_state_dict()[n])
    with pytest.raises(KeyError):
        ElasticReset(Tied(), eta=ETA).load_state_dict(er.state_dict())


def test_tied_weights_tracked_once():
    torch.manual_seed(0)
    model = Tied()
    theta0 = _snap(model)
    assert "head.weight" not in theta0  # named_parameters lists the shared Parameter once
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    er = ElasticReset(model, eta=ETA)
    snaps = _train(model, opt, 3, er)
    expected = _hand_ema(theta0, snaps, ["embed.weight"])
    torch.testing.assert_close(er.ema_state_dict()["embed.weight"], expected["embed.weight"], rtol=0, atol=1e-6)
    er.reset(model)
    torch.testing.assert_close(model.embed.weight.detach(), expected["embed.weight"], rtol=0, atol=1e-6)
    assert model.head.weight is model.embed.weight  # the tie survives the in-place reset
