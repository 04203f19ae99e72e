"""The learner group (runtime.learner.ranks): N learner actors in one torch.distributed group (gloo here), each
taking its share of every batch. After the same iterations on the same global batches, 2 ranks hold the
parameters 1 rank holds, for every algorithm (and GRPO with a sequence-mean loss and the KL in the loss); 2 ranks sharding the
model (runtime.learner.sharding: fsdp2) take the steps of 1 rank and resume from their checkpoint on 1 or 2 ranks; and a
whole run with 2 sharded ranks goes through Ray + vLLM."""
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
def test_a_run_with_a_two_rank_sharded_learner_group_through_ray_and_vllm(tiny_assets, ray_cluster, tmp_path):
    """The whole run with 2 learner ranks sharding the model (fsdp2): every rank gathers for the weight sync and the
    checkpoints (rank 0 writes them), vLLM samples with the group's weights, every rank restores a checkpoint. The
    replicated group (sharding: none) runs the same path as one rank but for the step, tested above."""
    from services.state.runlog import read_metrics
    from services.driver.train import Trainer

    base = tiny_assets[0]
    rt = base.runtime.model_copy(update={"mode": "ray", "engine": "vllm", "checkpoint_every": 1,
                                         "learner": base.runtime.learner.model_copy(update={"num_cpus": 0.5, "ranks": 2, "sharding": "fsdp2"})})
    cfg = base.model_copy(update={"runtime": rt, "train": base.train.model_copy(update={"iterations": 2})})
    tr = Trainer(cfg, tmp_path / "group", progress=False)
    try:
        assert tr.roles.learner_backend == "gloo"
        tr.run()
        rows = [r for r in read_metrics(tmp_path / "group") if "loss/policy" in r]
        assert len(rows) == 2
        for r in rows:
            assert r["learner/ranks"] == 2 and r["learner/rank_param_spread"] == 0.0
            assert r["rollout/behaviour_logp_gap"] < 1e-3  # vLLM sampled with the gathered weights, the group's
        ck = tr.latest_checkpoint()
        assert ck is not None and tr.roles.load(str(ck / "learner.pt")) == 2  # every rank restores the checkpoint
        sums = ray.get([a.param_checksum.remote() for a in tr.roles.learners])
        assert sums[0] == sums[1]
    finally:
        tr.close()


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp2_two_sharded_ranks_equal_one_rank_and_their_checkpoint_resumes_unsharded(tiny_assets, ray_cluster, tmp_path, lora):
    """runtime.learner.sharding fsdp2 (learner/parallel.py: shard_fsdp2): 2 CPU ranks (gloo), each holding half of every weight,
    take the same steps as one unsharded rank (PPO with a separate critic and Elastic Reset, which resets at the second step);
    the weight sync gathers the same policy; the gathered checkpoint of step 1 restores onto 1 unsharded rank and onto 2
    sharded ones, and both then take step 2 as the uninterrupted run did."""
    from actors.roles import LearnerActor
    from actors.weight_sync import TensorFile

    cfg, policy, batches = _setup(tiny_assets, tmp_path, "ppo")
    cfg = cfg.model_copy(update={"elastic_reset": cfg.elastic_reset.model_copy(update={"enabled": True, "every": 2, "eta": 0.5})})
    if lora:  # LoRA on a sharded learner: the adapters sharded with their blocks, the reference the LM with them off
        from learner.config import LoraSettings

        cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"lora": LoraSettings(r=4, alpha=8.0)}),
                                     "ppo": cfg.ppo.model_copy(update={"lr": 3e-2})})
    # LoRA's updates here are ~0.07 (lr 3e-2, so that the adapters move in 2 steps): float rounding passed on by Adam scales
    # with them (measured at most 4.4e-5 after step 1)
    atol = 1e-4 if lora else PARAM_ATOL
    sharded = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={
        "learner": cfg.runtime.learner.model_copy(update={"sharding": "fsdp2"})})})

    def group(name):
        ranks = [LearnerActor.options(num_cpus=0.5).remote(sharded, str(policy), name) for _ in range(2)]
        address, port = ray.get(ranks[0].rendezvous.remote())
        ray.get([a.join_group.remote(i, 2, address, port) for i, a in enumerate(ranks)], timeout=120)
        return ranks

    def close(ranks):
        ray.get([a.close.remote() for a in ranks])
        for a in ranks:
            ray.kill(a)

    single = make_learner(cfg, policy)
    ranks = group("fsdp-a")
    try:
        info = ray.get(ranks[0].__ray_call__.remote(lambda self: (
            self.learner.sharded, self.learner.n_blocks, sum(p.to_local().numel() for p in self.learner.model.parameters()),
            sum(p.numel() for p in self.learner.model.parameters()))))
        assert info[0] and info[1] == 2 * tiny_assets[0].policy.n_layer  # the policy's blocks and the critic's
        assert info[2] <= info[3] // 2 + 4096  # each rank holds about half of every weight
        want = single.step(copy.deepcopy(batches[0]))
        got = ray.get([a.step.remote(batches[0]) for a in ranks])
        for k, v in want.items():
            if k.startswith(("loss/", "kl/", "ppo/", "optim/", "advantage/")) and np.isfinite(v):
                assert got[0][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
        pub = ray.get([a.publish.remote() for a in ranks])  # every rank gathers; rank 0 writes
        assert pub[1][0] is None and pub[0][1] == 1
        with TensorFile.open(pub[0][0]["file"]) as f, f.reading(1) as views:
            for name, w in single.policy_state_dict().items():
                torch.testing.assert_close(views[name], w, atol=atol, rtol=PARAM_RTOL, msg=name)
        states = ray.get([a.state_dict.remote() for a in ranks])
        assert states[1]["model"] == {} and set(states[0]["model"]) == set(single.state_dict()["model"])
        for name, w in single.state_dict()["model"].items():
            torch.testing.assert_close(states[0]["model"][name], w, atol=atol, rtol=PARAM_RTOL, msg=name)
        assert set(states[0]["elastic"]["ema"]) == set(single.state_dict()["elastic"]["ema"])
        path = tmp_path / "learner.pt"
        ray.get([a.save.remote(str(path)) for a in ranks])  # rank 0 writes the gathered checkpoint
        want2 = single.step(copy.deepcopy(batches[1]))  # the uninterrupted run's step 2 (an Elastic Reset)
        assert want2["elastic_reset/event"] == 1.0
    finally:
        close(ranks)
    one = make_learner(cfg, policy)  # the sharded checkpoint on 1 unsharded rank
    one.load_state_dict(torch.load(path, weights_only=False))
    again = group("fsdp-b")  # and on 2 new sharded ranks
    try:
        assert ray.get([a.load.remote(str(path)) for a in again]) == [1, 1]
        got2 = ray.get([a.step.remote(batches[1]) for a in again])[0]
        final = ray.get([a.state_dict.remote() for a in again])[0]["model"]
    finally:
        close(again)
    got1 = one.step(copy.deepcopy(batches[1]))
    for k, v in want2.items():
        if k.startswith(("loss/", "kl/", "ppo/", "optim/", "elastic_reset/")) and np.isfinite(v):
            assert got1[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
            assert got2[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    for name, w in single.state_dict()["model"].items():
        torch.testing.assert_close(final[name], w, atol=atol, rtol=PARAM_RTOL, msg=name)
        torch.testing.assert_close(one.state_dict()["model"][name], w, atol=atol, rtol=PARAM_RTOL, msg=name)
