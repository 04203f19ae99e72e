"""policy.lora (learner/models/lora.py) in the PPO learner on the tiny real model: only adapters train, the reference is pi_0
with no second copy, the engines get merged weights, checkpoints hold the adapters, Elastic Reset acts on them, exports merge."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from learner.config import LoraSettings, load_config
from learner.learners.ppo import PPOLearner
from learner.models.engine import TransformersEngine
from learner.models.policy import load_policy, pad_batch, response_logprobs
from learner.types import ScoredRollouts

PROMPTS = ["This movie", "I think", "The plot", "Worst"] * 2


def _setup(tiny_assets, lora=LoraSettings(r=4, alpha=8.0), **over):
    cfg, _, paths = tiny_assets
    upd = {k: getattr(cfg, k).model_copy(update=v) for k, v in over.items()}
    upd["policy"] = cfg.policy.model_copy(update={"lora": lora})
    cfg = cfg.model_copy(update=upd)
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    lm = load_policy(paths.policy)
    pi0 = copy.deepcopy(lm).eval()
    eng = TransformersEngine(copy.deepcopy(lm), tok, cfg.generation)
    return cfg, tok, PPOLearner(cfg, lm, pad_id=tok.pad_token_id), eng, pi0


def _scored(eng, seed):
    r = eng.generate(PROMPTS, seed=seed)
    score = [float(len(x)) / 10 + (i % 3) for i, x in enumerate(r.response_ids)]
    return ScoredRollouts(r, [[s] for s in score], score, [0.0] * len(score))


def _base(learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.model.named_parameters() if not p.requires_grad}


def test_only_adapters_train_the_reference_is_pi0_and_the_engine_samples_the_merged_policy(tiny_assets):
    cfg, tok, learner, eng, pi0 = _setup(tiny_assets, ppo={"lr": 1e-2, "batch_size": 8, "minibatch_size": 4, "epochs": 2},
                                         kl={"mode": "fixed", "coef": 0.05})
    trainable = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("value_head", "critic.")) for n in trainable)
    assert sum(p.numel() for p in learner.ref.parameters()) == 0  # the reference owns no weights: it is the policy, adapters off
    base0 = _base(learner)
    adapters0 = {n: p.detach().clone() for n, p in learner.model.named_parameters() if n in trainable}
    for it in range(3):
        stats = learner.step(_scored(eng, it))
        eng.load_weights(learner.policy_state_dict(), learner.version)
        assert abs(stats["rollout/behaviour_logp_gap"]) < 1e-4  # the engine samples with the merged weights the learner holds
    after = dict(learner.model.named_parameters())
    assert all(torch.equal(after[n], t) for n, t in base0.items())  # the base never moves
    assert any(not torch.equal(after[n], t) for n, t in adapters0.items() if "lora_B" in n)
    assert stats["kl/to_ref_exact"] > 0  # the policy moved away from its reference
    r = eng.generate(PROMPTS, seed=9)
    batch = pad_batch(r.prompt_ids, r.response_ids, tok.pad_token_id)
    with torch.no_grad():
        assert torch.equal(response_logprobs(learner.ref, batch), response_logprobs(pi0, batch))  # adapters off = pi_0, exactly
        merged = copy.deepcopy(pi0)
        merged.load_state_dict(learner.policy_state_dict())
        learner.model.eval()
        gap = (response_logprobs(merged, batch) - response_logprobs(learner.model.lm, batch)).abs().max()
    assert gap < 1e-4 and set(learner.policy_state_dict()) == set(pi0.state_dict())


def test_a_checkpoint_holds_the_adapters_and_resumes_exactly(tiny_assets, tmp_path):
    over = dict(ppo={"lr": 1e-2, "batch_size": 8, "minibatch_size": 4, "epochs": 1}, kl={"mode": "fixed", "coef": 0.05})
    cfg, tok, a, eng, _ = _setup(tiny_assets, **over)
    a.step(_scored(eng, 0))
    sd = a.state_dict()
    full = sum(p.numel() for p in a.model.parameters())
    kept = sum(t.numel() for t in sd["model"].values())
    assert set(sd["model"]) == {n for n, p in a.model.named_parameters() if p.requires_grad} and kept < full / 2
    assert sd["lora"] == cfg.policy.lora.model_dump()
    torch.save(sd, tmp_path / "learner.pt")
    _, _, b, _, _ = _setup(tiny_assets, **over)
    b.load_state_dict(torch.load(tmp_path / "learner.pt", weights_only=False))
    batch = _scored(eng, 1)
    sa, sb = a.step(batch), b.step(batch)
    assert {k: v for k, v in sa.items() if not k.startswith("time_s")} == {k: v for k, v in sb.items() if not k.startswith("time_s")}
    _, _, c, _, _ = _setup(tiny_assets, lora=LoraSettings(r=2), **over)
    with pytest.raises(ValueError, match="policy.lora changed"):
        c.load_state_dict(sd)


def test_elastic_reset_averages_and_resets_the_adapters_only(tiny_assets):
    cfg, tok, learner, eng, _ = _setup(tiny_assets, ppo={"lr": 1e-2, "batch_size": 8, "minibatch_size": 4, "epochs": 1},
                                       elastic_reset={"enabled": True, "every": 2, "eta": 0.5}, kl={"mode": "fixed", "coef": 0.0})
    ema = learner.elastic.ema_state_dict()
    assert ema and all("lora_" in n for n in ema)  # no base weight is averaged (or stored a second time)
    assert all("lora_" in n or n.startswith(("value_head", "critic.")) for n in learner.elastic.initial)
    base0 = _base(learner)
    learner.step(_scored(eng, 0))
    assert any(not torch.equal(ema[n], learner.elastic.initial[n]) for n in ema)  # the EMA moved with the adapters
    stats = learner.step(_scored(eng, 1))
    assert stats["elastic_reset/event"] == 1.0 and learner.elastic.n_resets == 1
    params = dict(learner.model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in base0.items())
    assert all(torch.equal(learner.elastic.ema[n], learner.elastic.initial[n]) for n in ema)  # EMA <- theta_0 after the reset


def test_the_export_is_the_start_policy_with_the_adapters_merged(tiny_assets, tmp_path):
    from learner.models.export import export_policy

    paths = tiny_assets[2]
    cfg, tok, learner, eng, _ = _setup(tiny_assets, ppo={"lr": 1e-2, "batch_size": 8, "minibatch_size": 4, "epochs": 1})
    learner.step(_scored(eng, 0))
    torch.save(learner.state_dict(), tmp_path / "learner.pt")
    out = export_policy(paths.policy, tmp_path / "learner.pt", tmp_path / "exported")
    exported = load_policy(out).state_dict()
    merged = learner.policy_state_dict()
    assert set(exported) == set(merged)
    assert max(float((exported[k] - merged[k]).abs().max()) for k in merged) < 1e-6


def test_lora_settings_are_checked_and_do_not_change_the_task_assets(tiny_assets):
    from learner.config import ConfigError
    from tasks.imdb.build import resolve

    cfg, _, paths = tiny_assets
    with pytest.raises((ConfigError, ValueError), match="policy.lora applies to algorithm 'ppo'"):
        load_config("tiny", [f"data_dir={cfg.data_dir}", "algorithm=fdpg", "policy.lora.r=4"])
    with pytest.raises((ConfigError, ValueError), match="kl.reference 'ema' with policy.lora"):
        load_config("tiny", [f"data_dir={cfg.data_dir}", "policy.lora.r=4", "elastic_reset.enabled=true", "kl.reference=ema"])
    with pytest.raises((ConfigError, ValueError), match="r"):
        load_config("tiny", [f"data_dir={cfg.data_dir}", "policy.lora.r=0"])
    with_lora = load_config("tiny", [f"data_dir={cfg.data_dir}", "policy.lora.r=4", "train.threads=1"])
    assert with_lora.policy.lora.r == 4 and with_lora.policy.lora.target_modules is None
    assert resolve(with_lora).policy == paths.policy  # the same pi_0 folder: LoRA is how a run trains it, not another asset
    bad = LoraSettings(target_modules=["no_such_proj"])
    with pytest.raises(ValueError, match="linear layers: .*q_proj"):
        _setup(tiny_assets, lora=bad)


def test_the_adapters_are_the_seeds_whatever_the_random_state_before(tiny_assets):
    torch.manual_seed(1)
    _, _, a, _, _ = _setup(tiny_assets)
    torch.manual_seed(2)
    _, _, b, _, _ = _setup(tiny_assets)
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    lora_a = [n for n in pa if "lora_A" in n]
    assert lora_a and all(torch.equal(pa[n], pb[n]) for n in lora_a)  # every rank of a learner group starts from the same adapters
