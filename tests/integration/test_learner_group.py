"""The learner group (runtime.learner.ranks): N learner actors in one torch.distributed group (gloo here), each
taking its share of every batch. After the same iterations on the same global batches, 2 ranks hold the
parameters 1 rank holds, for every algorithm (and GRPO with a sequence-mean loss and the KL in the loss); and a whole run with 2 ranks goes through Ray + vLLM."""
import copy

import numpy as np
import pytest
import ray
import torch
from transformers import AutoTokenizer

from learner.learners import learner_class, make_learner
from learner.models.engine import TransformersEngine
from learner.parallel import DataParallel
from learner.types import ScoredRollouts

# float32 sums reduced in another order (two half-minibatches, then an all-reduce) round differently; Adam's
# g / sqrt(v) passes that on to the weights at the level of a few ulps of the update
PARAM_ATOL, PARAM_RTOL = 1e-5, 1e-4  # measured: at most 1.6e-6 (PPO), 5.8e-7 (f-DPG), 2.4e-7 (Quark); an update is ~1e-3


def test_a_group_of_one_is_the_identity():
    dp = DataParallel()
    idx = np.arange(8)
    assert not dp.active and dp.shard(idx) is idx and dp.share(5) == 1.0
    x = torch.arange(6.0).reshape(3, 2)
    assert dp.gather_rows(x) is x and dp.weighted_sum({"a": 2.0}, 1.0) == {"a": 2.0}
    with pytest.raises(ValueError, match="rank must be in"):
        DataParallel(2, 2)


GRPO = {"advantage": "grpo", "loss_agg": "seq-mean-token-mean"}  # a sequence mean: each rank's share is its rows, not its tokens


def _setup(tiny_assets, tmp_path, algorithm: str):
    base, _, paths = tiny_assets
    grpo = algorithm == "grpo"  # PPO's learner with a critic-free estimator over groups, the KL in the loss
    algorithm = "ppo" if grpo else algorithm
    sec = {"ppo": {"batch_size": 8, "minibatch_size": 4, "epochs": 2, "lr": 3e-3, **(GRPO if grpo else {})},
           "fdpg": {"batch_size": 8, "minibatch_size": 4, "lr": 1e-3},
           "quark": {"batch_size": 8, "minibatch_size": 4, "steps_per_iteration": 2}}[algorithm]
    rt = base.runtime.model_copy(update={"mode": "ray", "learner": base.runtime.learner.model_copy(update={"num_cpus": 0.5, "ranks": 2})})
    cfg = base.model_copy(update={"algorithm": algorithm, algorithm: getattr(base, algorithm).model_copy(update=sec), "runtime": rt})
    if grpo:
        cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"n_per_prompt": 2}),
                                     "kl": cfg.kl.model_copy(update={"placement": "loss", "estimator": "k3", "mode": "fixed", "coef": 0.1})})
    policy, _ = learner_class(algorithm).prepare_policy(cfg, paths.policy, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(policy))
    eng = TransformersEngine.from_path(policy, cfg.generation)
    batches = []
    for it in range(2):
        r = eng.generate(["Great film", "Awful", "I think", "The plot"] * 2, seed=it)
        score = [float(sum(t == tok.encode(" the", add_special_tokens=False)[0] for t in x)) + 0.1 * i for i, x in enumerate(r.response_ids)]
        r.groups = [0, 1, 2, 3, 0, 1, 2, 3]  # each prompt's two samples (the driver puts a group's rows together; any order works)
        batches.append(ScoredRollouts(r, [[s] for s in score], score, [0.0] * 8, gold=[s - 0.5 for s in score]))
    return cfg, policy, batches


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "fdpg", "quark", "grpo"])
def test_two_ranks_hold_the_parameters_of_one_rank(tiny_assets, ray_cluster, tmp_path, algorithm):
    from actors.roles import LearnerActor

    cfg, policy, batches = _setup(tiny_assets, tmp_path, algorithm)
    single = make_learner(cfg, policy)
    ranks = [LearnerActor.options(num_cpus=0.5).remote(cfg, str(policy), f"lg-{algorithm}") for _ in range(2)]
    try:
        address, port = ray.get(ranks[0].rendezvous.remote())
        assert ray.get([a.join_group.remote(i, 2, address, port) for i, a in enumerate(ranks)], timeout=120) == ["gloo", "gloo"]
        for b in batches:
            want = single.step(copy.deepcopy(b))
            got = ray.get([a.step.remote(b) for a in ranks])
            for k, v in want.items():
                if k.startswith(("loss/", "kl/", "ppo/", "fdpg/", "quark/", "optim/", "advantage/")) and np.isfinite(v):
                    assert got[0][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k  # the group's statistics are the whole batch's
        states = ray.get([a.state_dict.remote() for a in ranks])
        assert ray.get(ranks[0].param_checksum.remote()) == ray.get(ranks[1].param_checksum.remote())  # replicas identical
        ref = single.state_dict()["model"]
        moved = 0
        for name, w in ref.items():
            torch.testing.assert_close(states[0]["model"][name], w, atol=PARAM_ATOL, rtol=PARAM_RTOL, msg=name)
            moved += int(not torch.equal(w, make_learner(cfg, policy).state_dict()["model"][name])) if name.endswith("q_proj.weight") else 0
        assert moved > 0  # the comparison is about weights that training changed
        worst = max(float((states[0]["model"][n] - w).abs().max()) for n, w in ref.items())
        print(f"{algorithm}: largest |2 ranks - 1 rank| weight difference after 2 iterations: {worst:.3g}")
        assert states[0]["iteration"] == states[1]["iteration"] == 2
    finally:
        ray.get([a.close.remote() for a in ranks])
        for a in ranks:
            ray.kill(a)


@pytest.mark.slow
def test_a_run_with_a_two_rank_learner_group_through_ray_and_vllm(tiny_assets, ray_cluster, tmp_path):
    from services.state.runlog import read_metrics
    from services.driver.train import Trainer

    base = tiny_assets[0]
    rt = base.runtime.model_copy(update={"mode": "ray", "engine": "vllm", "checkpoint_every": 1,
                                         "learner": base.runtime.learner.model_copy(update={"num_cpus": 0.5, "ranks": 2})})
    cfg = base.model_copy(update={"runtime": rt, "train": base.train.model_copy(update={"iterations": 2})})
    tr = Trainer(cfg, tmp_path / "group", progress=False)
    try:
        assert tr.roles.learner_backend == "gloo"
        tr.run()
        rows = [r for r in read_metrics(tmp_path / "group") if "loss/policy" in r]
        assert len(rows) == 2
        for r in rows:
            assert r["learner/ranks"] == 2 and r["learner/rank_param_spread"] == 0.0
            assert r["rollout/behaviour_logp_gap"] < 1e-3  # vLLM sampled with rank 0's weights, the group's
        ck = tr.latest_checkpoint()
        assert ck is not None and tr.roles.load(str(ck / "learner.pt")) == 2  # every rank restores the checkpoint
        sums = ray.get([a.param_checksum.remote() for a in tr.roles.learners])
        assert sums[0] == sums[1]
    finally:
        tr.close()
