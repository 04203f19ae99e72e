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


def test_elastic_reset_restores_ema_then_initial(tiny_assets):
    cfg, tok, learner, eng = _setup(
        tiny_assets, ppo={"lr": 1e-2, "batch_size": 8, "minibatch_size": 4, "epochs": 1},
        elastic_reset={"enabled": True, "every": 2, "eta": 0.5}, kl={"mode": "fixed", "coef": 0.0},
    )
    init = {k: v.clone() for k, v in learner.model.lm.state_dict().items()}
    r = eng.generate(["Great film", "Awful"] * 4, seed=0)
    s = ScoredRollouts(r, [[float(i)] for i in range(8)], [float(i) for i in range(8)], [0.0] * 8)
    learner.step(s)
    ema_before = {k: v.clone() for k, v in learner.elastic.ema_state_dict().items()}
    out = learner.step(s)  # iteration 2: reset fires after this update
    assert out["elastic_reset/event"] == 1.0 and learner.elastic.n_resets == 1
    # The EMA the reset copied in: one more EMA update per optimiser step of iteration 2.
    sd = learner.model.state_dict()
    moved = [k for k in ema_before if not torch.equal(sd[k], init.get(k[3:], sd[k]))]
    assert moved, "the reset should leave the policy away from the initial weights"
    for k, v in learner.elastic.ema_state_dict().items():  # EMA <- theta_0
        assert torch.equal(v.to(init[k[3:]].dtype), init[k[3:]]), k
    assert learner.opt.state == {} or len(learner.opt.state) == 0  # optimiser state cleared


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
