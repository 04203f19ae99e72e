"""The single-process main job on the tiny task: metrics per iteration, synced weights, a summary."""
import json

import torch

from services.state.runlog import read_metrics
from tasks.imdb.build import resolve
from actors.roleset import LocalRoleSet
from services.driver.train import train


def test_local_train_logs_metrics_and_syncs(tiny_assets, tmp_path):
    base = tiny_assets[0]
    cfg = base.model_copy(update={
        "elastic_reset": base.elastic_reset.model_copy(update={"enabled": True, "every": 2}),
        "runtime": base.runtime.model_copy(update={"mode": "local", "engine": "transformers"}),
    })
    roles = LocalRoleSet(cfg, resolve(cfg))
    before = {k: v.clone() for k, v in roles.rollout.engine.model.state_dict().items()}
    summary = train(cfg, tmp_path / "run", progress=False, roles=roles)
    rows = read_metrics(tmp_path / "run")
    steps = [r for r in rows if "reward/proxy_mean" in r]
    assert len(steps) == cfg.train.iterations
    for key in ("reward/proxy_mean", "reward/proxy_member_0", "reward/proxy_member_1", "ensemble/std", "reward/gold_mean",
                "kl/from_init", "kl/to_ref", "kl/coef", "drift/ppl_under_init", "loss/policy", "loss/value", "loss/entropy",
                "policy/version", "time_s/rollout", "time_s/learn", "time_s/sync", "elastic_reset/event"):
        assert all(key in r for r in steps), key
    assert [r["elastic_reset/event"] for r in steps] == [0.0, 1.0, 0.0]
    assert any("eval/gold_mean" in r for r in rows) and "eval/kl_from_init_k3" in summary
    # the rollout engine holds exactly the learner's weights, and they moved
    after = roles.rollout.engine.model.state_dict()
    learner_sd = roles.learner.learner.policy_state_dict()
    assert all(torch.equal(after[k], learner_sd[k]) for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert roles.rollout.engine.policy_version == roles.learner_version()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["name"] == cfg.name
    assert (tmp_path / "run" / "tb").is_dir()
