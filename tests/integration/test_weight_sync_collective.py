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


def test_weight_sync_picks_the_collective_receivers_by_mode_and_node():
    """auto: the rollout actors on another node than the learner's (tests/integration/test_multinode.py runs that path end
    to end through Ray + vLLM); collective: every one, on any node; tmpfs and object_store: none."""
    from actors.roleset import collective_receivers

    assert collective_receivers("auto", "a", ["a", "b", "a", "c"]) == [1, 3]
    assert collective_receivers("auto", "a", ["a"]) == []
    assert collective_receivers("collective", "a", ["a", "a"]) == [0, 1]
    assert collective_receivers("tmpfs", "a", ["b"]) == [] and collective_receivers("object_store", "a", ["b"]) == []
