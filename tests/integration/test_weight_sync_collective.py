"""The collective weight sync (runtime.weight_sync: collective): buckets, a broadcast between real processes over
a stateless gloo group, and a run through Ray + vLLM whose engines take the weights straight into vLLM's in-place
reload, with no file written."""
import multiprocessing as mp

import pytest
import torch

from actors.collective import buckets, describe, free_port, receive, send, stateless_group, with_tied_head


def test_buckets_group_consecutive_tensors_of_one_dtype_up_to_the_limit():
    meta = [("a", (256, 1024), "float32"), ("b", (256, 1024), "float32"), ("c", (10,), "bfloat16"), ("d", (4, 4), "float32"),
            ("e", (1024, 1024), "float32")]
    # 1 MiB per a/b (256*1024*4 bytes), a 2 MiB limit: a+b together; c alone (another dtype); d, then e (4 MiB) alone
    assert buckets(meta, 2.0) == [[0, 1], [2], [3], [4]]
    assert buckets(meta, 0.5) == [[0], [1], [2], [3], [4]]  # a tensor larger than a bucket travels alone
    assert sum(buckets(meta, 1000.0), []) == [0, 1, 2, 3, 4]


def test_tied_output_layer_travels_as_its_own_entry():
    emb = torch.randn(5, 3)
    out = with_tied_head({"model.embed_tokens.weight": emb, "model.norm.weight": torch.ones(3)})
    assert "lm_head.weight" in out and torch.equal(out["lm_head.weight"], emb)
    assert [m[0] for m in describe(out)] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]


def _member(rank: int, world: int, port: int, meta, q) -> None:
    pg = stateless_group("gloo", "127.0.0.1", port, rank, world, timeout_s=60)
    got = {k: v.clone() for k, v in receive(pg, meta, 0.01, torch.device("cpu"))}
    q.put((rank, {k: v.tolist() for k, v in got.items()}))


def test_a_broadcast_reaches_every_rank_bit_for_bit():
    torch.manual_seed(0)
    named = {"w1": torch.randn(64, 64), "w2": torch.randn(7), "h": torch.randn(3, 5).to(torch.bfloat16), "w3": torch.randn(100, 30)}
    meta = describe(named)
    port, world = free_port(), 3
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(r, world, port, meta, q)) for r in (1, 2)]
    for p in procs:
        p.start()
    pg = stateless_group("gloo", "127.0.0.1", port, 0, world, timeout_s=60)
    send(pg, named, 0.01, torch.device("cpu"))  # 10 KiB buckets: several broadcasts
    results = dict(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert sorted(results) == [1, 2]
    for got in results.values():
        for k, v in named.items():
            assert torch.equal(torch.tensor(got[k], dtype=v.dtype), v), k


@pytest.mark.slow
def test_a_run_with_the_collective_sync_through_ray_and_vllm(tiny_assets, ray_cluster, tmp_path):
    import ray

    from services.state.runlog import read_metrics
    from services.driver.train import Trainer

    base = tiny_assets[0]
    rt = base.runtime.model_copy(update={"mode": "ray", "engine": "vllm", "weight_sync": "collective", "checkpoint_every": 0})
    cfg = base.model_copy(update={"runtime": rt, "train": base.train.model_copy(update={"iterations": 2})})
    tr = Trainer(cfg, tmp_path / "coll", progress=False)
    try:
        assert tr.roles._weight_group["backend"] == "gloo" and tr.roles._weight_group["world"] == 2
        before = tr.roles.generate(["This movie was", "I did not"], seed=1)
        tr.run()
        rows = [r for r in read_metrics(tmp_path / "coll") if "loss/policy" in r]
        assert len(rows) == 2
        for r in rows:
            # vLLM sampled every iteration with exactly the learner's weights: its log-probs are the learner's
            assert r["rollout/behaviour_logp_gap"] < 1e-3 and r["rollout/staleness"] == 0
            assert r["time_s/sync_send"] > 0
        after = tr.roles.generate(["This movie was", "I did not"], seed=1)
        assert after.policy_version == tr.roles.learner_version() == 2 and after.response_ids != before.response_ids
        # nothing went through a file: the engine's own tmpfs folder never got a version
        assert ray.get(tr.roles.rollout[0].__ray_call__.remote(lambda self: self.engine._sync.versions())) == []
    finally:
        tr.close()
