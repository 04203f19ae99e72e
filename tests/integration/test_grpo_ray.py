"""The critic-free estimators through the default runtime (Ray actors + vLLM, issue 26): GRPO and RLOO with several samples
per prompt, Elastic Reset and a WCO ensemble; no value network in the learner actor. The GRPO run trains LoRA adapters
(policy.lora, issue 29): only they change, vLLM samples with the merged weights, the export merges them; a run resumed from a checkpoint
redoes the same iterations as the uninterrupted one (vLLM's CPU kernels are not bit-reproducible: a tolerance), on the
first run's actors rebound to it (a warm pool). RLOO with
Elastic Reset and WCO runs through the default runtime in tests/integration/test_warm_sweep.py (its warm cell)."""
import shutil

import pytest
import ray

from services.driver.train import Trainer
from services.driver.warm import WarmRoles
from services.state.runlog import read_metrics

pytestmark = pytest.mark.slow
ITERATIONS = 4
SAME = ("reward/proxy_mean", "reward/gold_mean", "kl/from_init", "kl/to_ref", "loss/policy", "advantage/abs_mean", "policy/version",
        "elastic_reset/event", "rollout/groups_uniform")


def _cfg(tiny_assets, advantage: str, **kl):
    base = tiny_assets[0]
    return base.model_copy(update={
        "runtime": base.runtime.model_copy(update={"mode": "ray", "engine": "vllm", "checkpoint_every": 1, "keep_checkpoints": ITERATIONS}),
        "ppo": base.ppo.model_copy(update={"advantage": advantage, "lr": 3e-3}),
        "generation": base.generation.model_copy(update={"n_per_prompt": 4}),  # the tiny batch of 8: 2 prompts x 4 samples
        "ensemble": base.ensemble.model_copy(update={"aggregation": "wco"}),
        "elastic_reset": base.elastic_reset.model_copy(update={"enabled": True, "every": 2}),
        "kl": base.kl.model_copy(update={"mode": "fixed", "coef": 0.05, **kl}),
        "train": base.train.model_copy(update={"iterations": ITERATIONS, "eval_every": 2}),
    })


def _steps(run_dir):
    return {r["step"]: r for r in read_metrics(run_dir) if "loss/policy" in r}


def _frozen(learner):
    return ray.get(learner.__ray_call__.remote(
        lambda self: {n: float(p.double().sum()) for n, p in self.learner.model.named_parameters() if not p.requires_grad}))


def test_grpo_with_lora_elastic_reset_and_wco_through_ray_and_vllm_and_its_resume(tiny_assets, ray_cluster, tmp_path):
    import torch

    from learner.config import LoraSettings
    from learner.models.policy import load_policy

    cfg = _cfg(tiny_assets, "grpo", placement="loss", estimator="k3")  # GRPO's own form: the KL in the loss
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"lora": LoraSettings(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "up_proj"])})})
    pool = WarmRoles()  # the resumed run below takes this run's actors, rebound (services/driver/warm.py), as a sweep's next cell
    tr = Trainer(cfg, tmp_path / "full", progress=False, pool=pool)
    try:
        prompts, _ = tr.batch_prompts(0)
        assert prompts.groups == [0, 0, 0, 0, 1, 1, 1, 1] and len(set(prompts.texts)) == 2
        model = ray.get(tr.roles.learner.state_dict.remote())["model"]
        assert model and all(k.startswith("lm.") and ".lora_" in k for k in model), "the checkpoint holds more than the adapters"
        assert {k.split(".")[-4] for k in model} == {"q_proj", "v_proj", "up_proj"}
        frozen = _frozen(tr.roles.learner)
        summary = tr.run()
        assert _frozen(tr.roles.learner) == frozen  # the base weights never moved
        merged = ray.get(tr.roles.learner.__ray_call__.remote(lambda self: self.learner.policy_state_dict()))
    finally:
        tr.close()
    exported = load_policy(tmp_path / "full" / "policy").state_dict()  # train.export_policy: the start policy, adapters merged
    assert max(float((exported[k] - merged[k]).abs().max()) for k in merged) < 1e-6
    pi0 = load_policy(tiny_assets[2].policy).state_dict()
    assert not torch.equal(exported["model.layers.0.self_attn.q_proj.weight"], pi0["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(exported["model.layers.0.self_attn.k_proj.weight"], pi0["model.layers.0.self_attn.k_proj.weight"])
    full = _steps(tmp_path / "full")
    assert sorted(full) == list(range(1, ITERATIONS + 1))
    for r in full.values():
        assert "loss/value" not in r and "loss/kl" in r and r["advantage/abs_mean"] > 0
        assert r["rollout/behaviour_logp_gap"] < 1e-3  # vLLM sampled with the learner's weights (synced every iteration)
    assert [full[s]["elastic_reset/event"] for s in sorted(full)] == [0.0, 1.0, 0.0, 1.0]
    assert "eval/gold_mean" in summary

    # A run that died after iteration 2's checkpoint: its folder up to then, resumed; iterations 3 and 4 are redone
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    for ck in (cut / "checkpoints").glob("step-*"):
        if int(ck.name.split("-")[1]) > 2:
            shutil.rmtree(ck)
    try:
        tr = Trainer(cfg, cut, progress=False, pool=pool)
        try:
            tr.run(resume=True)
        finally:
            tr.close()
    finally:
        pool.close()
    assert pool.counts == {"cold": 1, "warm": 1}
    again = _steps(cut)
    assert sorted(again) == list(range(1, ITERATIONS + 1))  # each iteration logged once
    for step in (3, 4):
        for key in SAME:
            assert again[step][key] == pytest.approx(full[step][key], rel=1e-3, abs=1e-4), (step, key)
