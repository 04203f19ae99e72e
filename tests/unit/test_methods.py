"""f-DPG, Quark, SALSA and the toxicity objective: config rules, learners on a tiny real model, and
short runs through the runtime (in-process here; through Ray + vLLM in test_methods_ray.py)."""
import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from tasks.imdb.build import prepare, resolve
from learner.models.policy import load_policy
from learner.config import ConfigError, load_config
from learner.learners.fdpg import FDPGLearner
from learner.learners import NotApplicable, make_learner
from learner.methods.logprobs import masked_sum
from learner.models.policy import pad_batch, response_logprobs
from learner.learners.quark import QuarkLearner, expand_policy
from learner.models.engine import TransformersEngine
from learner.types import ScoredRollouts
from services.state.runlog import read_metrics
from services.driver.train import train


def _cfg(tiny_cfg, *overrides):
    """The tiny preset (same data dir as the session's assets) with overrides, through load_config's rules."""
    return load_config("tiny", [f"data_dir={tiny_cfg.data_dir}", f"runs_dir={tiny_cfg.runs_dir}", "train.threads=1", *overrides])


LOCAL = ["runtime.mode=local", "runtime.engine=transformers"]


# -- configuration rules ---------------------------------------------------------------------------
def test_other_algorithms_sections_are_rejected(tiny_cfg):
    with pytest.raises(ConfigError, match=r"section 'fdpg' configures algorithm 'fdpg' and does not apply to algorithm 'ppo'"):
        _cfg(tiny_cfg, "fdpg.lr=0.1")
    with pytest.raises(ConfigError, match=r"section 'elastic_reset' .* does not apply to algorithm 'quark'"):
        _cfg(tiny_cfg, "algorithm=quark", "elastic_reset.enabled=true")
    with pytest.raises(ConfigError, match=r"fdpg.beta applies only to target 'rlhf', not 'gdc'"):
        _cfg(tiny_cfg, "algorithm=fdpg", "fdpg.target=gdc", "fdpg.beta=0.5")
    with pytest.raises(ConfigError, match=r"fdpg.lag_every applies only to proposal 'lagged'"):
        _cfg(tiny_cfg, "algorithm=fdpg", "fdpg.lag_every=3")
    with pytest.raises(ConfigError, match=r"reference.weights .* only to kind 'sft' or 'soup', not 'initial'"):
        _cfg(tiny_cfg, "reference.weights=[0.5,0.5]")
    with pytest.raises(ConfigError, match=r"reference.weights has 3 entries; need one per SFT model \(n_sft = 2\)"):
        _cfg(tiny_cfg, "reference.kind=soup", "reference.weights=[0.2,0.3,0.5]")
    with pytest.raises(ConfigError, match=r"algorithm: Input should be 'ppo', 'fdpg' or 'quark'"):
        _cfg(tiny_cfg, "algorithm=dpo")


def test_switching_algorithm_drops_the_base_methods_sections(tiny_cfg, tmp_path):
    """The tiny preset sets `ppo:`; switching algorithm (override or variant) does not inherit it."""
    c = _cfg(tiny_cfg, "algorithm=fdpg", "fdpg.batch_size=8", "fdpg.minibatch_size=4")
    assert c.algorithm == "fdpg" and c.rollout_batch_size == 8 and "ppo" not in c.model_fields_set
    spec = tmp_path / "v.yaml"
    spec.write_text("ppo: {batch_size: 8, minibatch_size: 4}\nvariants:\n  base: {}\n  f: {algorithm: fdpg, fdpg: {divergence: tv}}\n"
                    "  bad: {algorithm: quark, kl: {coef: 0.1}}\n")
    with pytest.raises(ConfigError, match=r"(?s)variant 'bad'.*section 'kl' configures algorithm 'ppo'"):
        load_config(spec)
    spec.write_text("ppo: {batch_size: 8, minibatch_size: 4}\nvariants:\n  base: {}\n  f: {algorithm: fdpg, fdpg: {divergence: tv}}\n")
    base, f = load_config(spec).expand()
    assert base.ppo.batch_size == 8 and f.fdpg.divergence == "tv" and f.rollout_batch_size == 64
    # what `tether train` saves (cfg.dump) re-validates to the same config
    assert type(f).model_validate(f.dump()) == f


# -- learners on the tiny real model ---------------------------------------------------------------
def _fixed_batch(tok, engine, prompts, seed=0):
    r = engine.generate(prompts, seed=seed)
    return r


def _seq_logp(model, r):
    b = pad_batch(r.prompt_ids, r.response_ids, 0)
    with torch.no_grad():
        return masked_sum(response_logprobs(model, b), b["response_mask"], dim=1)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "js", "tv"])
def test_fdpg_moves_probability_towards_the_rewarded_samples(tiny_assets, tiny_cfg, divergence):
    cfg = _cfg(tiny_cfg, "algorithm=fdpg", f"fdpg.divergence={divergence}", "fdpg.batch_size=8", "fdpg.minibatch_size=8", "fdpg.lr=3e-3",
               "fdpg.beta=0.5", "fdpg.samples_per_prompt=1")  # one running Z: the reward differs between prompts here
    paths = tiny_assets[2]
    learner = make_learner(cfg, paths.policy)
    assert isinstance(learner, FDPGLearner)
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    eng = TransformersEngine(load_policy(paths.policy), tok, cfg.generation)
    r = eng.generate(["This movie", "I think", "The plot", "Worst"] * 2, seed=0)
    reward = [3.0, -3.0] * 4  # even samples are far more likely under the target p ~ pi_0 exp(r / beta)
    before = _seq_logp(learner.model, r)
    for _ in range(4):
        stats = learner.step(ScoredRollouts(r, [[x] for x in reward], reward, [0.0] * 8))
    after = _seq_logp(learner.model, r)
    gain = (after - before).numpy()
    assert gain[0::2].mean() > gain[1::2].mean() + 0.1, gain
    assert np.isfinite(stats["fdpg/log_z"]) and stats["policy/version"] == 4
    with pytest.raises(NotApplicable, match="applies only to algorithm 'ppo'"):
        learner.reset_now()


def test_fdpg_per_prompt_z_matches_each_prompts_own_target(tiny_assets, tiny_cfg):
    """samples_per_prompt 4: Z_c per prompt (naver/disco: one estimate per context). A reward shared by all of a
    prompt's samples cancels in p(x|c) = pi_0 exp(r/beta) / Z_c, so only differences within a prompt move it."""
    cfg = _cfg(tiny_cfg, "algorithm=fdpg", "fdpg.batch_size=8", "fdpg.minibatch_size=8", "fdpg.lr=3e-3", "fdpg.beta=0.5")
    assert cfg.fdpg.samples_per_prompt == 4 and cfg.samples_per_prompt == 4
    paths = tiny_assets[2]
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    eng = TransformersEngine(load_policy(paths.policy), tok, cfg.generation)
    r = eng.generate(["This movie"] * 4 + ["I think"] * 4, seed=0)
    # within each prompt, the first two samples are rewarded; prompt 2's samples get +20 more, shared by all four
    within = [3.0, 3.0, -3.0, -3.0]
    shifted = within + [x + 20.0 for x in within]
    flat = within + within
    a, b = make_learner(cfg, paths.policy), make_learner(cfg, paths.policy)
    sa = a.step(ScoredRollouts(r, [[x] for x in shifted], shifted, [0.0] * 8))
    sb = b.step(ScoredRollouts(r, [[x] for x in flat], flat, [0.0] * 8))
    assert sa["fdpg/prompts"] == 2 and sa["fdpg/prompts_without_z"] == 0
    assert sa["loss/policy"] == pytest.approx(sb["loss/policy"], rel=1e-4)  # the per-prompt shift cancels
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=1e-4, atol=1e-6)
    before = _seq_logp(b.model, r)
    for _ in range(3):
        b.step(ScoredRollouts(r, [[x] for x in flat], flat, [0.0] * 8))
    gain = (_seq_logp(b.model, r) - before).numpy()
    assert gain[[0, 1, 4, 5]].mean() > gain[[2, 3, 6, 7]].mean() + 0.1, gain


def test_fdpg_gdc_with_a_lagged_proposal(tiny_assets, tiny_cfg):
    """GDC's constraint is the proxy ensemble's own (aggregate >= a threshold calibrated on the first batch, then
    fixed); the gold is held out: a batch's gold scores change nothing."""
    cfg = _cfg(tiny_cfg, "algorithm=fdpg", "fdpg.target=gdc", "fdpg.constraint_quantile=0.75", "fdpg.proposal=lagged", "fdpg.lag_every=2",
               "fdpg.batch_size=8", "fdpg.minibatch_size=4", "fdpg.lr=3e-3")
    paths = tiny_assets[2]
    learner = make_learner(cfg, paths.policy)
    twin = make_learner(cfg, paths.policy)
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    eng = TransformersEngine(load_policy(paths.policy), tok, cfg.generation)
    r = eng.generate(["This movie", "I think", "The plot", "Worst"] * 2, seed=0)
    agg = [0.3, -1.0, 2.0, -0.5, 0.1, -2.0, 1.0, 0.0]
    sr = ScoredRollouts(r, [[a] for a in agg], agg, [0.0] * 8, gold=[5.0] * 8)
    proposal0 = copy.deepcopy(learner.policy_state_dict())
    s1 = learner.step(sr)
    assert s1["fdpg/constraint_threshold"] == pytest.approx(float(np.quantile(agg, 0.75)))
    assert s1["fdpg/constraint_rate"] == pytest.approx(0.25)  # 2 of 8 at or above the 75% quantile
    t1 = twin.step(ScoredRollouts(r, [[a] for a in agg], agg, [0.0] * 8, gold=[-5.0] * 8))  # other gold: same update
    assert t1["loss/policy"] == s1["loss/policy"]
    # the proposal (what the rollout engines get) stays put until lag_every iterations have passed
    assert learner.version == 0 and all(torch.equal(proposal0[k], v) for k, v in learner.policy_state_dict().items())
    s2 = learner.step(ScoredRollouts(r, [[a + 10] for a in agg], [a + 10 for a in agg], [0.0] * 8))  # no gold at all
    assert s2["fdpg/constraint_threshold"] == s1["fdpg/constraint_threshold"]  # fixed after calibration
    assert s2["fdpg/constraint_rate"] == 1.0
    assert learner.version == 1 and s2["fdpg/proposal_updated"] == 1.0
    assert all(torch.equal(learner.model.state_dict()[k], v) for k, v in learner.policy_state_dict().items())
    assert learner.state_dict()["gdc_threshold"] == s1["fdpg/constraint_threshold"]


def test_quark_reward_tokens_and_conditioning(tiny_assets, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, "algorithm=quark", "quark.k=3", "quark.batch_size=8", "quark.minibatch_size=8", "quark.steps_per_iteration=30",
               "quark.lr=3e-3")
    paths = tiny_assets[2]
    ids = expand_policy(paths.policy, tmp_path / "q", 3)
    base_tok = AutoTokenizer.from_pretrained(str(paths.policy))
    assert ids == [len(base_tok), len(base_tok) + 1, len(base_tok) + 2]
    assert expand_policy(paths.policy, tmp_path / "q", 3) == ids  # reused, not rebuilt
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "q"))
    assert tok.convert_ids_to_tokens(ids) == ["<|rq0|>", "<|rq1|>", "<|rq2|>"]
    base, expanded = load_policy(paths.policy), load_policy(tmp_path / "q")
    # without a reward token the expanded model is the base model on the base vocabulary
    x = torch.tensor([[base_tok.eos_token_id] + base_tok.encode("This movie was", add_special_tokens=False)])
    with torch.no_grad():
        lb, le = base(input_ids=x).logits, expanded(input_ids=x).logits
    assert torch.allclose(lb, le[..., : lb.shape[-1]], atol=1e-3)
    learner = make_learner(cfg, tmp_path / "q")
    assert isinstance(learner, QuarkLearner) and learner.best_token == ids[-1]
    eng = TransformersEngine(copy.deepcopy(expanded), tok, cfg.generation)
    r = eng.generate(["This movie", "I think", "The plot", "Worst"] * 2, seed=0)
    assert r.n_prefix == 0
    reward = [float(i) for i in range(8)]  # samples 6, 7 form the top quantile
    stats = learner.step(ScoredRollouts(r, [[x] for x in reward], reward, [0.0] * 8))
    assert stats["quark/pool_size"] == 8 and stats["loss/kl"] >= 0
    # conditioning: the top samples became likelier after the best token than after the worst one
    def cond_logp(token, i):
        b = pad_batch([[token] + r.prompt_ids[i]], [r.response_ids[i]], 0)
        with torch.no_grad():
            return float(masked_sum(response_logprobs(learner.model, b), b["response_mask"], dim=1))
    top = np.mean([cond_logp(ids[-1], i) - cond_logp(ids[0], i) for i in (6, 7)])
    bottom = np.mean([cond_logp(ids[-1], i) - cond_logp(ids[0], i) for i in (0, 1)])
    assert top > bottom + 0.5, (top, bottom)
    # the engine conditions on a prefix, and Rollouts knows which tokens are not the prompt
    eng.load_weights(learner.policy_state_dict(), learner.version)
    r2 = eng.generate(["This movie"], seed=1, prefix_ids=[learner.best_token])
    assert r2.n_prefix == 1 and r2.prompt_ids[0][0] == learner.best_token and r2.plain_prompt_ids[0] == r.prompt_ids[0]
    # checkpoint round trip keeps the pool
    sd = learner.state_dict()
    other = make_learner(cfg, tmp_path / "q")
    other.load_state_dict(sd)
    assert len(other.pool) == 8 and other.version == learner.version


def test_toxicity_scorer_orders_obvious_texts():
    from learner.models.toxicity import ToxicityScorer

    s = ToxicityScorer()
    p = s.prob(["what a lovely film, I enjoyed every minute", "this shit movie is fucking garbage, you idiots"])
    assert p[0] < 0.2 < 0.8 < p[1]
    logit = s.score(["what a lovely film, I enjoyed every minute"])
    assert logit[0] == pytest.approx(np.log((1 - p[0]) / p[0]), rel=1e-6)


# -- short runs through the runtime (in-process roles) ---------------------------------------------
@pytest.mark.parametrize("name,overrides", [
    ("fdpg_rlhf", ["algorithm=fdpg", "fdpg.batch_size=8", "fdpg.minibatch_size=4", "fdpg.lr=1e-3"]),
    ("fdpg_gdc", ["algorithm=fdpg", "fdpg.target=gdc", "fdpg.proposal=lagged", "fdpg.lag_every=2", "fdpg.batch_size=8", "fdpg.minibatch_size=4"]),
    ("quark", ["algorithm=quark", "quark.batch_size=8", "quark.minibatch_size=4", "quark.steps_per_iteration=2"]),
    ("quark_toxicity", ["algorithm=quark", "task.objective=toxicity", "quark.batch_size=8", "quark.minibatch_size=4", "quark.steps_per_iteration=2"]),
])
def test_methods_run_through_the_training_loop(tiny_assets, tiny_cfg, tmp_path, name, overrides):
    cfg = _cfg(tiny_cfg, *LOCAL, "runtime.checkpoint_every=2", *overrides)
    summary = train(cfg, tmp_path / name, progress=False)
    rows = read_metrics(tmp_path / name)
    steps = [r for r in rows if "reward/proxy_mean" in r]
    assert len(steps) == cfg.train.iterations
    assert all("kl/from_init" in r and "reward/gold_mean" in r and "time_s/learn" in r for r in steps)
    assert "eval/gold_mean" in summary and "eval/kl_from_init_k3" in summary
    if cfg.algorithm == "quark":
        assert steps[-1]["quark/pool_size"] == cfg.train.iterations * cfg.quark.batch_size
        assert json.loads((tmp_path / name / "quark-policy" / "tether_quark.json").read_text())["k"] == 5
    if cfg.task.objective == "toxicity":
        assert "eval/toxicity_mean" in summary and "toxicity/mean" in steps[0]
        assert summary["eval/proxy_gold_gap"] == pytest.approx(0.0, abs=1e-5)  # one scorer is both
    if name == "fdpg_gdc":
        assert all(0.0 <= r["fdpg/constraint_rate"] <= 1.0 for r in steps)
    if cfg.algorithm == "fdpg":  # the driver drew batch / samples_per_prompt prompts, each sampled samples_per_prompt times
        # (two draws of the same review prefix are one context, so at most that many distinct prompts)
        n = [r["fdpg/prompts"] for r in steps]
        assert all(1 <= x <= cfg.fdpg.batch_size // cfg.fdpg.samples_per_prompt for x in n) and max(n) == 2, n


def test_salsa_prepares_sft_models_and_trains_against_their_soup(tiny_assets, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, *LOCAL, "reference.kind=soup", "reference.sft_tokens=20000", "train.iterations=2")
    with pytest.raises(Exception, match=r"tether prepare"):
        resolve(cfg)  # the SFT stage is not built yet: the error names the command that builds it
    m = prepare(cfg)["sft"]["metrics"]
    assert len(m["members"]) == 2 and m["distance_between_0_1"] > 0
    assert all(x["distance_from_base"] > 0 for x in m["members"])
    paths = resolve(cfg)
    assert paths.reference_weights == [0.5, 0.5] and paths.base_policy != paths.policy
    a, b = (load_policy(p).state_dict() for p in paths.reference)
    pi0 = load_policy(paths.base_policy).state_dict()
    k = "model.layers.0.mlp.up_proj.weight"
    soup = (a[k] + b[k]) / 2
    # SALSA, Algorithm 1: policy, KL reference and value network all start from the soup; drift is measured from pi_0
    from actors.roleset import LocalRoleSet
    from services.driver.train import Trainer

    tr = Trainer(cfg, tmp_path / "salsa", progress=False, roles=None)
    try:
        learner = tr.roles.learner.learner
        assert torch.allclose(learner.ref.state_dict()[k], soup, atol=1e-6)
        assert torch.allclose(learner.model.lm.state_dict()[k], soup, atol=1e-6)
        assert torch.allclose(learner.model.critic.state_dict()[k.removeprefix("model.")], soup, atol=1e-6)
        assert torch.equal(tr.roles.gold.evaluator.init_model.state_dict()[k], pi0[k])  # the common model of every method
        assert isinstance(tr.roles, LocalRoleSet)
        summary = tr.run()
    finally:
        tr.close()
    assert summary["eval/kl_from_init_k3"] >= 0
    # its baseline (kind: sft) uses SFT model 0 in all three places
    base_cfg = _cfg(tiny_cfg, *LOCAL, "reference.kind=sft", "reference.sft_tokens=20000", "train.iterations=1")
    tr = Trainer(base_cfg, tmp_path / "sft", progress=False)
    try:
        learner = tr.roles.learner.learner
        for sd in (learner.ref.state_dict(), learner.model.lm.state_dict()):
            assert torch.equal(sd[k], a[k])
        assert torch.equal(learner.model.critic.state_dict()[k.removeprefix("model.")], a[k])
        assert torch.equal(tr.roles.gold.evaluator.init_model.state_dict()[k], pi0[k])
    finally:
        tr.close()
