"""The PPO learner on a tiny real model: it learns a reward, resets to the EMA, and checkpoints exactly."""
import copy

import torch
from transformers import AutoTokenizer

from learner.models.policy import load_policy
from learner.learners.ppo import PPOLearner
from learner.models.engine import TransformersEngine
from learner.types import ScoredRollouts


def _setup(tiny_assets, **over):
    cfg, _, paths = tiny_assets
    upd = {k: getattr(cfg, k).model_copy(update=v) for k, v in over.items()}
    cfg = cfg.model_copy(update=upd)
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    lm = load_policy(paths.policy)
    eng = TransformersEngine(copy.deepcopy(lm), tok, cfg.generation)
    return cfg, tok, PPOLearner(cfg, lm, pad_id=tok.pad_token_id), eng


def _score_token_count(rollouts, token_id):
    """A reward the policy can learn quickly: how often it emits one token."""
    return [float(sum(t == token_id for t in r)) for r in rollouts.response_ids]


def test_learner_increases_a_simple_reward(tiny_assets):
    cfg, tok, learner, eng = _setup(tiny_assets, ppo={"lr": 3e-3, "batch_size": 16, "minibatch_size": 8, "epochs": 2}, kl={"mode": "fixed", "coef": 0.0})
    target = tok.encode(" the", add_special_tokens=False)[0]
    prompts = ["This movie", "I think", "The plot", "Worst"] * 4
    first = last = None
    for it in range(8):
        r = eng.generate(prompts, seed=it)
        score = _score_token_count(r, target)
        s = ScoredRollouts(r, [[x] for x in score], score, [0.0] * len(score))
        stats = learner.step(s)
        eng.load_weights(learner.policy_state_dict(), learner.version)
        first = sum(score) / len(score) if first is None else first
        last = sum(score) / len(score)
        assert stats["rollout/staleness"] == 0 and abs(stats["rollout/behaviour_logp_gap"]) < 1e-4  # generate scores == learner forward
    assert last > first + 0.5, (first, last)
    assert learner.version == 8 and eng.policy_version == 8


def test_elastic_reset_follows_the_authors_rules(tiny_assets):
    """The authors' IMDB code (RL4LMs, branch paper): the EMA is updated once per PPO iteration, after all epochs
    (ema_ppo.py:176-180); a reset copies the EMA into the policy only (training_utils.py:305-309: the separate value
    model is left alone) and keeps the optimiser state (reset_opt False, training_utils.py:221); then EMA <- theta_0."""
    cfg, tok, learner, eng = _setup(
        tiny_assets, ppo={"lr": 1e-2, "batch_size": 8, "minibatch_size": 4, "epochs": 2},  # 4 optimiser steps per iteration
        elastic_reset={"enabled": True, "every": 100, "eta": 0.5}, kl={"mode": "fixed", "coef": 0.0},
    )
    assert learner.model.critic is not None  # ppo.value_model: separate, the default
    params = lambda: {n: p.detach().clone() for n, p in learner.model.named_parameters()}  # noqa: E731
    theta0 = params()
    r = eng.generate(["Great film", "Awful"] * 4, seed=0)
    s = ScoredRollouts(r, [[float(i)] for i in range(8)], [float(i) for i in range(8)], [0.0] * 8)
    learner.step(s)
    theta1, ema1 = params(), {k: v.clone() for k, v in learner.elastic.ema_state_dict().items()}
    assert learner.elastic.n_updates == 1  # one EMA update for the 4 optimiser steps
    assert set(ema1) == {n for n in theta0 if n.startswith("lm.")}  # the value function is not averaged
    for n, v in ema1.items():
        torch.testing.assert_close(v, 0.5 * theta0[n] + 0.5 * theta1[n], rtol=0, atol=1e-6)
    learner.step(s)
    theta2 = params()
    assert learner.elastic.n_updates == 2
    n_opt_state = len(learner.opt.state)
    version = learner.version
    learner.reset_now()
    after = params()
    for n in ema1:  # policy <- EMA = 0.5 * ema1 + 0.5 * theta2; EMA <- theta_0
        torch.testing.assert_close(after[n], 0.5 * ema1[n] + 0.5 * theta2[n], rtol=0, atol=1e-6)
        assert torch.equal(learner.elastic.ema_state_dict()[n].to(theta0[n].dtype), theta0[n]), n
    moved = [n for n in ema1 if not torch.equal(after[n], theta0[n])]
    assert moved, "the reset leaves the policy between theta_0 and where training took it"
    for n in theta0:
        if n.startswith(("critic.", "value_head")):
            assert torch.equal(after[n], theta2[n]), n  # the value function is not moved by the reset
    assert len(learner.opt.state) == n_opt_state > 0  # the optimiser state is kept
    assert learner.version == version + 1  # the weights changed: rollouts must resync


def test_ema_cadence_options_per_epoch_and_per_step(tiny_assets):
    for update, n in (("epoch", 2), ("step", 4)):
        cfg, tok, learner, eng = _setup(
            tiny_assets, ppo={"lr": 1e-2, "batch_size": 8, "minibatch_size": 4, "epochs": 2},
            elastic_reset={"enabled": True, "every": 100, "eta": 0.5, "update": update}, kl={"mode": "fixed", "coef": 0.0})
        r = eng.generate(["Great film", "Awful"] * 4, seed=0)
        learner.step(ScoredRollouts(r, [[float(i)] for i in range(8)], [float(i) for i in range(8)], [0.0] * 8))
        assert learner.elastic.n_updates == n, update


def test_checkpoint_roundtrip_gives_identical_next_step(tiny_assets):
    cfg, tok, a, eng = _setup(tiny_assets, ppo={"lr": 1e-3, "batch_size": 8, "minibatch_size": 4, "epochs": 1}, elastic_reset={"enabled": True, "every": 3})
    r = eng.generate(["Great film", "Awful"] * 4, seed=0)
    s = ScoredRollouts(r, [[float(i)] for i in range(8)], [float(i) for i in range(8)], [0.0] * 8)
    a.step(s)
    sd = copy.deepcopy(a.state_dict())
    _, _, b, _ = _setup(tiny_assets, ppo={"lr": 1e-3, "batch_size": 8, "minibatch_size": 4, "epochs": 1}, elastic_reset={"enabled": True, "every": 3})
    b.load_state_dict(sd)
    sa, sb = a.step(s), b.step(s)
    for k in ("loss/policy", "loss/value", "kl/coef_next"):
        assert sa[k] == sb[k], k
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_one_registry_names_a_learner_for_every_algorithm_and_only_ppo_resets_elastically():
    """learner.learners.LEARNERS and the config's Algorithm names agree; the driver asks the learner class whether it
    makes Elastic Resets (it names no algorithm)."""
    from typing import get_args

    import pytest

    from learner.config import load_config
    from learner.learners import LEARNERS, learner_class
    from learner.types import Algorithm

    assert set(LEARNERS) == set(get_args(Algorithm))
    for algo in LEARNERS:
        assert learner_class(algo).algorithm == algo
    with pytest.raises(ValueError, match="ppo, fdpg, quark.*'grpo'"):
        learner_class("grpo")
    er = load_config("tiny", ["elastic_reset.enabled=true"])
    assert learner_class("ppo").resets_elastically(er) and not learner_class("ppo").resets_elastically(load_config("tiny"))
    assert not learner_class("fdpg").resets_elastically(er) and not learner_class("quark").resets_elastically(er)
