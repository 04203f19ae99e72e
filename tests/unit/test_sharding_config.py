"""runtime.learner.sharding's rules, and the optimiser-state conversion that lets an unsharded run's checkpoint restore sharded."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from learner.config import load_config
from learner.learners.base import by_name_optimizer_state
from learner.learners.ppo import PPOLearner
from learner.models.policy import load_policy


@pytest.mark.parametrize("sets,match", [
    (["runtime.learner.sharding=fsdp2"], r"runtime.learner.ranks >= 2 \(this run: mode 'ray', ranks 1\)"),
    (["runtime.learner.sharding=fsdp2", "runtime.learner.ranks=2", "algorithm=fdpg", "fdpg.batch_size=8", "fdpg.minibatch_size=4"],
     "applies to algorithm 'ppo'"),
    (["runtime.learner.sharding=fsdp2", "runtime.learner.ranks=2", "runtime.weight_sync=collective"], "not collective"),
    (["runtime.learner.sharding=fsdp2", "runtime.learner.ranks=2", "runtime.learner.compile=true"], "compile is not supported"),
    (["runtime.learner.sharding=fsdp3"], "fsdp2"),
])
def test_sharding_settings_are_checked(tiny_cfg, sets, match):
    sizes = [] if "algorithm=fdpg" in sets else ["ppo.batch_size=8", "ppo.minibatch_size=4"]
    with pytest.raises(ValueError, match=match):
        load_config("tiny", [f"data_dir={tiny_cfg.data_dir}", *sizes, *sets])


def test_a_sharded_setting_that_holds_loads(tiny_cfg):
    cfg = load_config("tiny", [f"data_dir={tiny_cfg.data_dir}", "ppo.batch_size=8", "ppo.minibatch_size=4",
                               "runtime.learner.sharding=fsdp2", "runtime.learner.ranks=2"])
    assert cfg.runtime.learner.sharding == "fsdp2"


def test_an_unsharded_optimiser_state_by_name_restores_the_same_state(tiny_assets):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    cfg, _, paths = tiny_assets
    cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"batch_size": 8, "minibatch_size": 4, "epochs": 1})})
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    a = PPOLearner(cfg, load_policy(paths.policy), pad_id=tok.pad_token_id)
    for p in a.trainable:  # an optimiser state worth restoring: one Adam step on made-up gradients
        p.grad = torch.randn_like(p) * 1e-3
    a.opt.step()
    sd = copy.deepcopy(a.opt.state_dict())
    named = by_name_optimizer_state(a.model, a.opt, sd)
    assert all(isinstance(k, str) for k in named["state"]) and named["param_groups"][0]["params"][0] == next(iter(dict(a.model.named_parameters())))
    b = PPOLearner(cfg, load_policy(paths.policy), pad_id=tok.pad_token_id)
    set_optimizer_state_dict(b.model, b.opt, named, options=StateDictOptions(full_state_dict=True))
    got = b.opt.state_dict()
    assert got["state"].keys() == sd["state"].keys()
    for i, st in sd["state"].items():
        for k, v in st.items():
            assert torch.equal(got["state"][i][k], v), (i, k)
