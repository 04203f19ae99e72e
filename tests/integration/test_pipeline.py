"""runtime.pipeline: one-step off-policy rollouts (batch i+1 generated with the weights from before batch i's update),
the staleness each batch records, and PPO's truncated importance correction of stale tokens."""
import copy

import pytest
import torch
from transformers import AutoTokenizer

from learner.config import validate_dict
from learner.learners.ppo import PPOLearner
from learner.models.engine import TransformersEngine
from learner.models.policy import load_policy
from learner.types import ScoredRollouts
from services.state.runlog import read_metrics
from services.driver.train import Trainer


def _learner(tiny_assets):
    cfg, _, paths = tiny_assets
    cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"lr": 1e-3, "batch_size": 8, "minibatch_size": 4, "epochs": 2})})
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    lm = load_policy(paths.policy)
    return cfg, PPOLearner(cfg, copy.deepcopy(lm), pad_id=tok.pad_token_id), TransformersEngine(copy.deepcopy(lm), tok, cfg.generation)


def _weights(learner):
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def test_a_stale_batch_whose_sampler_equals_pi_old_trains_as_a_fresh_one(tiny_assets):
    """The correction reduces to the synchronous update when mu = pi_old (every weight 1): staleness 0 == the sync run."""
    _, a, eng = _learner(tiny_assets)
    _, b, _ = _learner(tiny_assets)
    r = eng.generate(["Great film", "Awful", "It was", "I loved"] * 2, seed=4)
    fresh = ScoredRollouts(r, [[float(i)] for i in range(8)], [float(i % 3) for i in range(8)], [0.0] * 8)
    sa = a.step(fresh)
    b.version = 1  # the same batch, stamped one version old: staleness 1, and its behaviour log-probs are pi_old's exactly
    sb = b.step(copy.deepcopy(fresh))
    assert sa["rollout/staleness"] == 0 and sb["rollout/staleness"] == 1
    assert sb["offpolicy/is_weight_mean"] == pytest.approx(1.0, abs=1e-5) and sb["offpolicy/is_clipfrac"] == 0.0
    assert sa["loss/policy"] == pytest.approx(sb["loss/policy"], rel=1e-5, abs=1e-7)
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        # mu = pi_old up to the engine's rounding (~1e-6), which Adam's normalised step can lift to ~1e-5 on a near-zero gradient
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)


def test_a_stale_batch_from_another_policy_is_reweighted(tiny_assets):
    _, a, eng = _learner(tiny_assets)
    _, b, _ = _learner(tiny_assets)
    r = eng.generate(["Great film", "Awful", "It was", "I loved"] * 2, seed=4)
    # the sampler mu differs from pi_old: behaviour log-probs shifted per token (as a one-step-old policy's would be)
    g = torch.Generator().manual_seed(0)
    r_old = copy.deepcopy(r)
    r_old.behaviour_logprobs = [[x + float(torch.randn(1, generator=g)) * 0.5 for x in lp] for lp in r.behaviour_logprobs]
    mk = lambda rr: ScoredRollouts(rr, [[float(i)] for i in range(8)], [float(i % 3) for i in range(8)], [0.0] * 8)  # noqa: E731
    sa = a.step(mk(r_old))  # fresh: behaviour log-probs are only a diagnostic, no reweighting
    b.version = 1
    sb = b.step(mk(r_old))  # stale: reweighted by min(pi_old / mu, 2)
    assert sa["offpolicy/is_weight_mean"] == 1.0
    assert sb["offpolicy/is_weight_mean"] != pytest.approx(1.0, abs=1e-3) and 0 < sb["offpolicy/is_clipfrac"] < 1
    assert sa["loss/policy"] != pytest.approx(sb["loss/policy"], rel=1e-4)
    wa, wb = _weights(a), _weights(b)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) > 1e-3  # far beyond the tolerance of the test above


def test_pipeline_settings_are_validated(tiny_assets):
    base = tiny_assets[0].dump()
    with pytest.raises(Exception, match="max_staleness"):
        validate_dict({**base, "runtime": {**base.get("runtime", {}), "pipeline": True}}, source="test")
    with pytest.raises(Exception, match="applies to algorithm 'ppo'"):
        validate_dict({**{k: v for k, v in base.items() if k != "ppo"}, "algorithm": "fdpg",
                       "runtime": {**base.get("runtime", {}), "pipeline": True, "max_staleness": 1}}, source="test")


def _pipelined(tiny_assets, mode: str, engine: str, pipeline: bool):
    base = tiny_assets[0]
    return base.model_copy(update={
        "runtime": base.runtime.model_copy(update={"mode": mode, "engine": engine, "pipeline": pipeline, "max_staleness": int(pipeline),
                                                   "checkpoint_every": 0}),
        "ppo": base.ppo.model_copy(update={"lr": 3e-3}),
    })


def _check_pipelined(rows, iterations):
    steps = [r for r in rows if "loss/policy" in r]
    assert len(steps) == iterations
    # the first batch is generated synchronously; each later one with the weights from one update before
    assert [r["rollout/staleness"] for r in steps] == [0.0] + [1.0] * (iterations - 1)
    assert all(r["rollout/dropped_stale"] == 0 for r in steps)
    assert all("time_s/rollout_wait" in r for r in steps[:-1]) and "time_s/rollout_wait" not in steps[-1]
    assert steps[0]["offpolicy/is_weight_mean"] == 1.0
    for r in steps[1:]:  # the correction is applied: mu (the previous weights) differs from pi_old
        assert r["offpolicy/is_weight_mean"] != 1.0 and r["rollout/behaviour_logp_gap"] > 1e-4


def test_pipelined_run_in_process(tiny_assets, tmp_path):
    cfg = _pipelined(tiny_assets, "local", "transformers", True)
    tr = Trainer(cfg, tmp_path / "p", progress=False)
    try:
        tr.run()
    finally:
        tr.close()
    _check_pipelined(read_metrics(tmp_path / "p"), cfg.train.iterations)


@pytest.mark.slow
def test_pipelined_run_through_ray_and_vllm_with_the_engine_core_in_its_own_process(tiny_assets, ray_cluster, tmp_path):
    """Ray actors + vLLM with runtime.pipeline and the opt-in runtime.vllm_engine_core: process (vLLM's engine core in a child
    process of the rollout actor, as vLLM does by default; the default, auto, runs it in the actor: tests/integration/test_e2e_ray.py)."""
    import ray
    from engine_probe import vllm_children

    from actors.recovery import _pid

    cfg = _pipelined(tiny_assets, "ray", "vllm", True)
    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"vllm_engine_core": "process"})})
    assert not cfg.vllm_in_actor
    tr = Trainer(cfg, tmp_path / "p", progress=False)
    try:
        kids = vllm_children(ray.get(tr.roles.rollout[0].__ray_call__.remote(_pid)))
        assert kids, "no vLLM engine-core process under the rollout actor"
        summary = tr.run()
        assert tr.roles.generate(["This movie"], seed=1).policy_version == tr.roles.learner_version()  # synced at the end
    finally:
        tr.close()
    _check_pipelined(read_metrics(tmp_path / "p"), cfg.train.iterations)
    assert "eval/gold_mean" in summary


def test_engine_core_in_actor_needs_ray_and_vllm(tiny_assets):
    base = tiny_assets[0].dump()
    with pytest.raises(Exception, match="needs runtime.mode: ray"):
        validate_dict({**base, "runtime": {**base.get("runtime", {}), "mode": "local", "vllm_engine_core": "in_actor"}}, source="test")
    # auto: in the actor only where there is one (Ray) and it runs vLLM; a local run keeps vLLM's own processes
    auto = {**base, "runtime": {**base.get("runtime", {}), "vllm_engine_core": "auto"}}
    assert validate_dict({**auto, "runtime": {**auto["runtime"], "mode": "ray", "engine": "vllm"}}, source="test").vllm_in_actor
    assert not validate_dict({**auto, "runtime": {**auto["runtime"], "mode": "ray", "engine": "transformers"}}, source="test").vllm_in_actor
    assert not validate_dict({**auto, "runtime": {**auto["runtime"], "mode": "local", "engine": "vllm"}}, source="test").vllm_in_actor
