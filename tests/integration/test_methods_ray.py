"""f-DPG (lagged proposal), Quark (reward tokens in vLLM's vocabulary) and SALSA through Ray actors and vLLM."""
import pytest

from tasks.imdb.build import prepare
from learner.config import load_config
from services.state.runlog import read_metrics
from services.driver.train import Trainer

pytestmark = pytest.mark.slow


def _cfg(tiny_cfg, *overrides):
    return load_config("tiny", [f"data_dir={tiny_cfg.data_dir}", f"runs_dir={tiny_cfg.runs_dir}", "train.threads=1",
                                "runtime.mode=ray", "runtime.engine=vllm", "runtime.checkpoint_every=0", *overrides])


def _run(cfg, folder):
    tr = Trainer(cfg, folder, progress=False)
    try:
        summary = tr.run()
        return tr, summary, [r for r in read_metrics(folder) if "time_s/learn" in r]
    finally:
        tr.close()


def test_quark_samples_with_the_best_reward_token_in_vllm(tiny_assets, tiny_cfg, ray_cluster, tmp_path):
    cfg = _cfg(tiny_cfg, "algorithm=quark", "quark.batch_size=8", "quark.minibatch_size=4", "quark.steps_per_iteration=2")
    tr, summary, steps = _run(cfg, tmp_path / "quark")
    assert len(steps) == cfg.train.iterations and steps[-1]["quark/pool_size"] == 8 * cfg.train.iterations
    assert all(r["rollout/dropped_stale"] == 0 for r in steps)
    assert summary["eval/kl_from_init_k3"] > 0  # the conditioned, trained policy moved away from pi_0


def test_fdpg_lagged_proposal_through_ray(tiny_assets, tiny_cfg, ray_cluster, tmp_path):
    cfg = _cfg(tiny_cfg, "algorithm=fdpg", "fdpg.proposal=lagged", "fdpg.lag_every=2", "fdpg.batch_size=8", "fdpg.minibatch_size=4",
               "fdpg.lr=3e-3", "train.iterations=4")
    tr, summary, steps = _run(cfg, tmp_path / "fdpg")
    # rollouts come from the proposal: its version moves every 2 iterations, and no batch was stale
    assert [r["policy/version"] for r in steps] == [0.0, 1.0, 1.0, 2.0]
    assert all(r["rollout/dropped_stale"] == 0 for r in steps)
    assert "eval/gold_mean" in summary


def test_salsa_soup_reference_through_ray(tiny_assets, tiny_cfg, ray_cluster, tmp_path):
    cfg = _cfg(tiny_cfg, "reference.kind=soup", "reference.sft_tokens=20000", "ppo.lr=3e-3")
    prepare(cfg)
    tr, summary, steps = _run(cfg, tmp_path / "salsa")
    # SALSA, Algorithm 1: at step 0 the policy is the soup, its own KL reference (KL 0), while drift is measured from
    # pi_0, which the soup of two fine-tunes is not (KL > 0 from the start)
    assert steps[0]["kl/to_ref_exact"] == pytest.approx(0.0, abs=1e-5) and steps[0]["kl/from_init"] > 1e-3
    assert steps[-1]["kl/to_ref_exact"] > steps[0]["kl/to_ref_exact"]
