"""The critic-free family on PPO's learner (issue 26), on the tiny real model: no value network anywhere, the estimators'
advantages reach the loss, the KL in the loss, DAPO's filter of uniform groups, checkpoints, and the config's rules."""
import copy

import pytest
import torch
from transformers import AutoTokenizer

from learner.config import ConfigError, load_config
from learner.learners.ppo import PPOLearner
from learner.models.engine import TransformersEngine
from learner.models.policy import load_policy
from learner.types import ScoredRollouts

N = 4  # samples per prompt
PROMPTS = ["Great film", "Awful", "It was", "I loved"]


def _setup(tiny_assets, *, advantage="grpo", ppo=None, kl=None, n=N):
    cfg, _, paths = tiny_assets
    upd = {"ppo": cfg.ppo.model_copy(update={"advantage": advantage, "lr": 3e-3, "batch_size": 16, "minibatch_size": 8, "epochs": 2, **(ppo or {})}),
           "kl": cfg.kl.model_copy(update={"mode": "fixed", "coef": 0.0, **(kl or {})}),
           "generation": cfg.generation.model_copy(update={"n_per_prompt": n})}
    cfg = cfg.model_copy(update=upd)
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    lm = load_policy(paths.policy)
    eng = TransformersEngine(copy.deepcopy(lm), tok, cfg.generation)
    return cfg, tok, PPOLearner(cfg, lm, pad_id=tok.pad_token_id), eng


def _batch(eng, scores, seed=0):
    r = eng.generate([p for p in PROMPTS for _ in range(N)], seed=seed)
    r.groups = [i // N for i in range(len(r))]
    return ScoredRollouts(r, [[s] for s in scores], list(scores), [0.0] * len(scores))


def _weights(lrn):
    return {k: v.detach().clone() for k, v in lrn.model.state_dict().items()}


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_a_critic_free_estimator_builds_trains_and_saves_no_value_network(tiny_assets, advantage):
    cfg, tok, lrn, eng = _setup(tiny_assets, advantage=advantage)
    names = [n for n, _ in lrn.model.named_parameters()]
    assert not any(n.startswith(("value_head", "critic.")) for n in names), names
    assert all(n.startswith("lm.") for n in lrn.state_dict()["model"]), "a value weight in the checkpoint"
    before = _weights(lrn)
    out = lrn.step(_batch(eng, [float(i % 3) for i in range(16)]))
    assert "loss/value" not in out and "ppo/vf_clipfrac" not in out and "loss/kl" not in out
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert out["advantage/abs_mean"] > 0 and out["rollout/groups_uniform"] == 0
    assert any(not torch.equal(before[k], v) for k, v in lrn.model.state_dict().items())  # it learned


def test_the_default_keeps_gae_and_its_value_network(tiny_assets):
    cfg, _, paths = tiny_assets
    assert cfg.ppo.advantage == "gae" and cfg.generation.n_per_prompt == 1 and cfg.kl.placement == "reward"
    lrn = PPOLearner(cfg, load_policy(paths.policy), pad_id=0)
    assert any(n.startswith("value_head") for n, _ in lrn.model.named_parameters())


def test_identical_scores_in_every_group_give_no_policy_gradient(tiny_assets):
    """GRPO: a group of equal scores has advantage 0, so with no KL term nothing moves (Adam's first step is 0/eps = 0)."""
    cfg, tok, lrn, eng = _setup(tiny_assets, advantage="grpo")
    before = _weights(lrn)
    out = lrn.step(_batch(eng, [float(i // N) for i in range(16)]))  # each prompt's 4 samples share a score
    assert out["advantage/abs_mean"] == 0.0 and out["rollout/groups_uniform"] == 4
    assert out["loss/policy"] == 0.0
    for k, v in lrn.model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_dapo_filter_drops_uniform_groups_from_the_loss_and_counts_them(tiny_assets):
    """Two of four groups uniform: with the filter their rows are out of the loss, so the update equals a run on the
    other two groups alone (token-mean over the kept tokens)."""
    scores = [0.0, 1.0, 2.0, 0.5, 3.0, 3.0, 3.0, 3.0, 1.0, 0.0, 0.0, 2.0, -1.0, -1.0, -1.0, -1.0]
    _, _, a, eng = _setup(tiny_assets, advantage="grpo", ppo={"drop_uniform_groups": True, "minibatch_size": 16, "epochs": 1})
    s = _batch(eng, scores)
    out = a.step(s)
    assert out["rollout/groups_uniform"] == 2 and out["rollout/groups_dropped"] == 2
    _, _, b, _ = _setup(tiny_assets, advantage="grpo", ppo={"minibatch_size": 16, "epochs": 1})
    out_b = b.step(copy.deepcopy(s))
    assert "rollout/groups_dropped" not in out_b and out_b["rollout/groups_uniform"] == 2
    # the same advantages; without the filter the zero-advantage rows dilute the token mean, so the losses differ
    assert out["loss/policy"] != pytest.approx(out_b["loss/policy"], rel=1e-6)
    kept = [i for i in range(16) if i // N in (0, 2)]
    _, _, c, _ = _setup(tiny_assets, advantage="grpo", ppo={"minibatch_size": 8, "batch_size": 8, "epochs": 1})
    sc = copy.deepcopy(s)
    sc = ScoredRollouts(sc.rollouts.take(kept), [sc.proxy_scores[i] for i in kept], [sc.reward[i] for i in kept], [0.0] * 8)
    out_c = c.step(sc)
    assert out["loss/policy"] == pytest.approx(out_c["loss/policy"], rel=1e-5, abs=1e-7)
    for va, vc in zip(a.model.state_dict().values(), c.model.state_dict().values()):
        # equal up to the forward passes' rounding on differently padded batches (~1e-7), which Adam's normalised first step
        # lifts to ~1e-5 on a near-zero gradient (as in tests/integration/test_pipeline.py)
        torch.testing.assert_close(va, vc, rtol=1e-3, atol=1e-4)


def test_every_group_uniform_and_dropped_trains_nothing(tiny_assets):
    _, _, lrn, eng = _setup(tiny_assets, advantage="rloo", ppo={"drop_uniform_groups": True})
    before = _weights(lrn)
    out = lrn.step(_batch(eng, [1.0] * 16))
    assert out["rollout/groups_dropped"] == 4 and "loss/policy" not in out
    assert all(torch.equal(before[k], v) for k, v in lrn.model.state_dict().items())
    assert out["policy/version"] == 1.0  # an iteration still counts (the driver's schedule, checkpoints)


def test_kl_in_the_loss_pulls_towards_the_reference_and_is_logged(tiny_assets):
    """kl.placement loss with k3: at the first step pi = pi_ref and k3's gradient is 0; after an update that moved the
    policy, a run whose only signal is the KL term (uniform scores) moves it back: its KL to the reference falls."""
    _, _, lrn, eng = _setup(tiny_assets, advantage="grpo", kl={"placement": "loss", "estimator": "k3", "coef": 1.0},
                            ppo={"epochs": 4, "lr": 1e-2})
    out = lrn.step(_batch(eng, [float(i % 4) for i in range(16)]))  # moves the policy
    assert "loss/kl" in out and out["loss/kl"] >= 0
    uniform = _batch(eng, [float(i // N) for i in range(16)], seed=3)
    first = lrn.step(uniform)
    second = lrn.step(copy.deepcopy(uniform))
    assert first["advantage/abs_mean"] == 0.0
    assert second["loss/kl"] < first["loss/kl"]  # the KL term alone pulled the policy back towards pi_ref
    # in the reward instead: the sequence scores carry -beta * KL, so the uniform proxy scores no longer give 0 advantage
    _, _, r, eng2 = _setup(tiny_assets, advantage="grpo", kl={"placement": "reward", "coef": 1.0}, ppo={"epochs": 4, "lr": 1e-2})
    r.step(_batch(eng2, [float(i % 4) for i in range(16)]))
    assert r.step(_batch(eng2, [float(i // N) for i in range(16)], seed=3))["advantage/abs_mean"] > 0


def test_gspo_clip_higher_and_the_aggregations_reach_the_update(tiny_assets):
    """One minibatch, one epoch: the only step has ratio 1, so clip-higher changes nothing, and GSPO (sequence ratio,
    sequence mean of token means) has the gradient of the token ratio under the same aggregation; the aggregations
    themselves weigh sequences of different lengths differently, so their updates differ."""
    weights = {}
    for name, over in {"token": {}, "clip_high": {"clip_high": 0.28},
                       "seq-mean-token-mean": {"loss_agg": "seq-mean-token-mean"},
                       "gspo": {"ratio_level": "sequence", "loss_agg": "seq-mean-token-mean"},
                       "seq-mean-token-sum-norm": {"loss_agg": "seq-mean-token-sum-norm"}}.items():
        _, _, lrn, eng = _setup(tiny_assets, advantage="dr_grpo", ppo={"minibatch_size": 16, "epochs": 1, **over})
        s = _batch(eng, [float(i % 3) for i in range(16)])
        r = s.rollouts
        for i in range(0, 16, 3):  # responses of different lengths (as if they had stopped early)
            keep = 2 + i
            r.response_ids[i], r.behaviour_logprobs[i] = r.response_ids[i][:keep], r.behaviour_logprobs[i][:keep]
        out = lrn.step(s)
        assert torch.isfinite(torch.tensor(out["loss/policy"]))
        weights[name] = _weights(lrn)

    def same(a, b):
        return all(torch.allclose(weights[a][k], weights[b][k], rtol=1e-4, atol=1e-6) for k in weights[a])

    assert same("clip_high", "token") and same("gspo", "seq-mean-token-mean")
    assert not same("token", "seq-mean-token-mean") and not same("token", "seq-mean-token-sum-norm")
    assert not same("seq-mean-token-mean", "seq-mean-token-sum-norm")


def test_checkpoint_roundtrip_of_a_critic_free_learner_gives_the_identical_next_step(tiny_assets):
    over = dict(advantage="rloo", ppo={"epochs": 1})
    _, _, a, eng = _setup(tiny_assets, **over)
    s = _batch(eng, [float(i % 5) for i in range(16)])
    a.step(s)
    sd = copy.deepcopy(a.state_dict())
    _, _, b, _ = _setup(tiny_assets, **over)
    b.load_state_dict(sd)
    sa, sb = a.step(copy.deepcopy(s)), b.step(copy.deepcopy(s))
    assert sa == {k: sb[k] for k in sa if not k.startswith("time_s/")} | {k: sa[k] for k in sa if k.startswith("time_s/")}
    for (ka, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), ka


def test_a_critic_free_checkpoint_exports_as_a_hugging_face_policy(tiny_assets, tmp_path):
    """The run's export (policy/ at the end, tether export) reads the LM's weights from a checkpoint without a value head."""
    from transformers import AutoModelForCausalLM

    from learner.models.export import export_policy

    cfg, _, paths = tiny_assets
    _, _, lrn, eng = _setup(tiny_assets, advantage="grpo")
    lrn.step(_batch(eng, [float(i % 3) for i in range(16)]))
    torch.save(lrn.state_dict(), tmp_path / "learner.pt")
    out = export_policy(paths.policy, tmp_path / "learner.pt", tmp_path / "policy")
    got = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    for k, v in lrn.model.lm.state_dict().items():
        assert torch.equal(got[k], v), k


def _load(tiny_cfg, *over):
    return load_config("tiny", [f"data_dir={tiny_cfg.data_dir}", *over])


def test_config_rules_name_what_is_wrong_and_what_would_do(tiny_cfg):
    with pytest.raises(ConfigError, match=r"ppo.advantage 'grpo' compares the samples of one prompt: set generation.n_per_prompt >= 2"):
        _load(tiny_cfg, "ppo.advantage=grpo")
    with pytest.raises(ConfigError, match=r"must be a multiple of generation.n_per_prompt \(3\)"):
        _load(tiny_cfg, "ppo.advantage=grpo", "generation.n_per_prompt=3")
    with pytest.raises(ConfigError, match=r"drop_uniform_groups .* needs generation.n_per_prompt >= 2"):
        _load(tiny_cfg, "ppo.drop_uniform_groups=true")
    with pytest.raises(ConfigError, match=r"f-DPG draws fdpg.samples_per_prompt"):
        _load(tiny_cfg, "algorithm=fdpg", "generation.n_per_prompt=2")
    with pytest.raises(ConfigError, match=r"ppo.advantage"):
        _load(tiny_cfg, "ppo.advantage=ppo")
    with pytest.raises(ConfigError, match=r"ppo.value_coef configures GAE's value network, which ppo.advantage 'rloo' does not build"):
        _load(tiny_cfg, "ppo.advantage=rloo", "generation.n_per_prompt=2", "ppo.value_coef=0.5")
    with pytest.raises(ConfigError, match=r"kl.placement"):
        _load(tiny_cfg, "kl.placement=both")
    cfg = _load(tiny_cfg, "ppo.advantage=reinforce_pp")  # no group baseline: one sample per prompt is fine
    assert cfg.samples_per_prompt == 1
    cfg = _load(tiny_cfg, "ppo.advantage=grpo", "generation.n_per_prompt=4", "kl.placement=loss", "kl.estimator=k3")
    assert cfg.samples_per_prompt == 4 and cfg.dump()["generation"]["n_per_prompt"] == 4
